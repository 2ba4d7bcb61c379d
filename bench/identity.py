"""What a signed identity costs per request: the gateway's signing and a service's verification.

The identity contract (docs/CONTRACTS.md, "Service identity") uses one HMAC-SHA256 secret per
sender → receiver pair. The alternative that would also keep every key within its pair is an
asymmetric signature (the gateway signs with a private key, services hold the public key); this
measures both over the very canonical string the contract signs, in process, CPU time of this
process, best of five runs of ``BENCH_IDENTITY_REQUESTS`` (default 20,000) each:

* ``hmac_sign_gateway`` — :meth:`PreparedIdentity.header_block`, the gateway's per-request path (one
  identity prepared per verified token, then one keyed-hash copy per request);
* ``hmac_verify_service`` — :meth:`IdentityVerifier.verify` from the decoded headers, what
  :class:`IdentityGate` does per request (principal binding included);
* ``ed25519_sign`` / ``ed25519_verify`` and ``p256_sign`` / ``p256_verify`` — the same canonical
  bytes with ``cryptography``'s Ed25519 and ECDSA P-256 (SHA-256);
* ``digest_1k`` / ``digest_1m`` — the ``Content-Digest`` of a 1 KiB and a 1 MiB body (paid by the
  sender and again by the receiver; a GET's empty-body digest is a constant);
* ``replay_local`` — the receiver's in-process replay window per request;
* ``replay_redis_cpu`` / ``replay_redis_wall`` — the whole replay check with the shared memory
  (one ``SET NX EX`` to a private Redis on loopback, through the kit's bounded client): CPU of this
  process and wall time per request, one request at a time.

Writes ``bench/results/identity.json``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from svckit.identity import (
    EMPTY_DIGEST,
    Identity,
    IdentitySigner,
    IdentityVerifier,
    canonical,
    content_digest,
    identity_headers,
    new_nonce,
)
from svckit.redisguard import RedisGuard
from svckit.replay import ReplayMemory

from testkit.redisproc import PrivateRedis

RESULTS = Path(__file__).parent / "results"
ALICE = Identity(
    "http://localhost:9000/",
    "local|alice",
    "user",
    "timesheets-spa",
    frozenset({"read:timesheets", "create:timesheets", "delete:timesheets"}),
    "Alice Example",
)
KEYS = {"gateway-timesheets-1": b"k" * 32}
TARGET = "/timesheets?limit=20"


def best_us(run: Callable[[], object], requests: int, rounds: int = 5) -> float:
    """Best per-call CPU time over ``rounds`` runs of ``requests`` calls, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(requests):
            run()
        best = min(best, (time.process_time() - started) / requests)
    return round(best * 1e6, 2)


def measure(requests: int) -> dict[str, float]:
    signer = IdentitySigner(KEYS)
    prepared = signer.prepare(ALICE)
    verifier = IdentityVerifier({"gateway": KEYS}, 60)
    now = int(time.time())
    stamp = str(now).encode()
    nonce = new_nonce().encode()
    target, request_id = TARGET.encode(), b"r" * 32
    block = prepared.header_block(
        method="GET", target=target, request_id=request_id, timestamp=stamp, nonce=nonce
    )
    raw = [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n") if line]
    message = canonical(
        kid="gateway-timesheets-1",
        timestamp=str(now),
        method="GET",
        target=TARGET,
        request_id="r" * 32,
        nonce=nonce.decode(),
        digest=EMPTY_DIGEST,
        identity=ALICE,
    )
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_public = ed_key.public_key()
    ed_signature = ed_key.sign(message)
    p256_key = ec.generate_private_key(ec.SECP256R1())
    p256_public = p256_key.public_key()
    ecdsa = ec.ECDSA(hashes.SHA256())
    p256_signature = p256_key.sign(message, ecdsa)

    def hmac_sign() -> object:
        fresh = new_nonce().encode()
        return prepared.header_block(
            method="GET", target=target, request_id=request_id, timestamp=stamp, nonce=fresh
        )

    def hmac_verify() -> object:
        headers = identity_headers(raw)  # type: ignore[arg-type]
        return verifier.verify(headers, method="GET", target=TARGET, now=now)

    memory = ReplayMemory(None, "timesheets", 60)
    kilobyte, megabyte = b"x" * 1024, b"x" * (1 << 20)

    async def remember() -> object:
        return await memory.first_use(new_nonce(), "POST")

    def replay_local() -> object:
        coroutine = remember()
        try:
            coroutine.send(None)  # completes without suspending: no Redis configured
        except StopIteration as done:
            return done.value
        raise RuntimeError("the local replay window suspended")

    quarter = requests // 4
    return {
        "hmac_sign_gateway": best_us(hmac_sign, requests),
        "hmac_verify_service": best_us(hmac_verify, requests),
        "ed25519_sign": best_us(lambda: ed_key.sign(message), quarter),
        "ed25519_verify": best_us(lambda: ed_public.verify(ed_signature, message), quarter),
        "p256_sign": best_us(lambda: p256_key.sign(message, ecdsa), quarter),
        "p256_verify": best_us(lambda: p256_public.verify(p256_signature, message, ecdsa), quarter),
        "digest_1k": best_us(lambda: content_digest(kilobyte), requests),
        "digest_1m": best_us(lambda: content_digest(megabyte), max(1, requests // 200)),
        "replay_local": best_us(replay_local, requests),
    }


async def redis_round_trips(requests: int) -> dict[str, float]:
    redis = PrivateRedis().start()
    guard = RedisGuard(redis.url, "bench:", timeout=1.0, retry_seconds=1.0)
    memory = ReplayMemory(guard, "timesheets", 60)
    try:
        for _ in range(200):  # connections opened, the server warm
            await memory.first_use(new_nonce(), "POST")
        best_cpu = best_wall = float("inf")
        for _ in range(3):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(requests):
                assert await memory.first_use(new_nonce(), "POST") == "fresh"
            best_cpu = min(best_cpu, (time.process_time() - cpu) / requests)
            best_wall = min(best_wall, (time.perf_counter() - wall) / requests)
        # 32 requests at a time, as under load: their nonces share pipelined round trips
        best_concurrent = float("inf")
        for _ in range(3):
            cpu = time.process_time()
            waves = max(1, requests // 32)
            for _ in range(waves):
                await asyncio.gather(*(memory.first_use(new_nonce(), "POST") for _ in range(32)))
            best_concurrent = min(best_concurrent, (time.process_time() - cpu) / (waves * 32))
    finally:
        memory.close()  # its window's write-back, if a slow call marked Redis down (a pending task else)
        await guard.close()
        redis.stop()
    return {
        "replay_redis_cpu": round(best_cpu * 1e6, 2),
        "replay_redis_wall": round(best_wall * 1e6, 2),
        "replay_redis_cpu_32_concurrent": round(best_concurrent * 1e6, 2),
    }


def main() -> int:
    requests = int(os.environ.get("BENCH_IDENTITY_REQUESTS", "20000"))
    figures = measure(requests)
    figures.update(asyncio.run(redis_round_trips(max(1, requests // 4))))
    for name, value in figures.items():
        print(f"  {name:<22} {value:>9.2f} µs per request")
    document: dict[str, Any] = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "requests": requests,
        "us_per_request": figures,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "identity.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
