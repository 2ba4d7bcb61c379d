"""A DPoP client for tests: a key pair and proofs made the way browsers and SDKs make them.

:class:`DpopKey` holds a private key (ES256 by default, as WebCrypto clients use) and signs proofs
for a method and URL, with ``ath`` for an access token and a server ``nonce``; every claim and header
can be overridden or removed (``None``) to build the malformed proofs the tests refuse.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from svckit.dpop import access_token_hash, thumbprint


class DpopKey:
    def __init__(self, alg: str = "ES256", *, rsa_bits: int = 2048) -> None:
        self.alg = alg
        self.private_key: Any
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
            self.private_key = ec.generate_private_key(curve)
            self.public_jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        elif alg.startswith(("RS", "PS")):
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            self.public_jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        elif alg == "EdDSA":
            self.private_key = ed25519.Ed25519PrivateKey.generate()
            self.public_jwk = OKPAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            raise ValueError(f"no test key for {alg}")

    @property
    def jkt(self) -> str:
        return thumbprint(self.public_jwk)

    def private_jwk(self) -> dict[str, Any]:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return dict(ECAlgorithm.to_jwk(self.private_key, as_dict=True))
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return dict(RSAAlgorithm.to_jwk(self.private_key, as_dict=True))
        return dict(OKPAlgorithm.to_jwk(self.private_key, as_dict=True))

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        iat: Any = None,
        without: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A proof for ``method url``; ``claims``/``headers`` override (``None`` removes) members,
        ``without`` removes claims (``iat`` included)."""
        payload: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": url.split("?", 1)[0].split("#", 1)[0],
            "iat": int(time.time()) if iat is None else iat,
        }
        if access_token is not None:
            payload["ath"] = access_token_hash(access_token)
        if nonce is not None:
            payload["nonce"] = nonce
        for name in without:
            payload.pop(name, None)
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        header: dict[str, Any] = {"typ": "dpop+jwt", "jwk": self.public_jwk}
        for name, value in (headers or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        alg = header.pop("alg", self.alg)
        return jwt.encode(payload, self.private_key, algorithm=alg, headers=header)
