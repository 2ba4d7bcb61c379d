"""The gateway application: the raw-ASGI API edge under ``/api``, a small Starlette app for the rest.

``/api…`` goes straight to :class:`gateway.edge.Edge` (no framework on the hot path). Everything else
— ``/healthz``, ``/readyz``, ``/config.json`` and the SPA's files — is served by the kit's service
app, whose lifespan starts and stops the gateway's shared resources: the upstream connection pool,
the Redis guard, the JWKS cache (warmed at start), the rate-limit sync task and the denial auditor.
Metrics are not on this (public) listener: ``python -m gateway`` serves them on ``METRICS_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from svckit.app import create_service_app
from svckit.clock import SYSTEM_CLOCK, Clock
from svckit.dpop import ReplayGuard
from svckit.health import CheckFailed
from svckit.http import HttpClient, SignedClient
from svckit.identity import IdentitySigner
from svckit.logs import configure_logging
from svckit.redisguard import RedisGuard
from svckit.settings import SettingsError, load_settings
from svckit.tasks import PeriodicTask, stop_all

from . import metrics, openapi
from .accesslog import AccessLog
from .cors import Cors
from .denials import DenialAuditor
from .edge import Edge
from .forwarded import ForwardedHeaders
from .issuers import IssuerConfigError, load_issuers
from .jwks import JwksCache
from .proxy import Forwarder
from .ratelimit import RateLimiter
from .readahead import ReadAhead
from .revocations import DenyList, RevocationFeed
from .routes import RouteTable, RouteTableError, load_routes
from .serving import OPENAPI_PATH, GatewayHttpProtocol, is_api_path
from .settings import GatewaySettings
from .spa import spa_routes
from .tokens import TokenVerifier
from .upstream import UpstreamPool

log = logging.getLogger("gateway")

KEY_AGE_INTERVAL_SECONDS = 5.0
JWKS_MAINTAIN_SECONDS = 1.0  # how often issuers without fresh keys are looked at (back-off permitting)


class Gateway:
    """Owns every per-worker resource; ``edge`` exists between :meth:`start` and :meth:`stop`."""

    def __init__(self, settings: GatewaySettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.routes = load_routes(settings.gateway_routes_file, frozenset(settings.upstreams))
        self.issuers = load_issuers(settings)
        # one signer per upstream: each pair has its own key (svckit.identity.PAIRS)
        self.signers = {
            service: IdentitySigner(settings.identity_sign_keys(service)) for service in settings.upstreams
        }
        self.cors = Cors(settings.cors_origins)
        self.edge: Edge | None = None
        self.replays: ReplayGuard | None = None
        self.jwks: JwksCache | None = None
        self.limiter: RateLimiter | None = None
        self.auditor: DenialAuditor | None = None
        self.redis: RedisGuard | None = None
        self.revocations: RevocationFeed | None = None
        self.access_log: AccessLog | None = None
        self.request_metrics: metrics.RequestMetrics | None = None
        self.pools: dict[str, UpstreamPool] = {}
        self._http = HttpClient(total_timeout=settings.jwks_fetch_timeout_seconds + 5)
        self._warming: asyncio.Task[None] | None = None
        self._tasks: list[PeriodicTask] = []

    async def start(self) -> None:
        settings = self.settings
        self.pools = {
            service: UpstreamPool(
                url,
                size=settings.upstream_pool_size,
                connect_timeout=settings.upstream_connect_timeout_seconds,
                read_timeout=settings.upstream_read_timeout_seconds,
                max_wait=settings.upstream_pool_wait_seconds,
            )
            for service, url in settings.upstreams.items()
        }
        self.redis = RedisGuard.from_settings(settings)
        clock = self.clock
        self.jwks = JwksCache(settings, self.issuers, self.redis, self._http.session(), clock)
        deny = DenyList(clock.time)
        if settings.revocation_feed_enabled:
            leeways = {issuer: config.leeway_seconds for issuer, config in self.issuers.items()}
            self.revocations = RevocationFeed(self.redis, deny, leeways)
            self.revocations.start()
        verifier = TokenVerifier(settings, self.issuers, self.jwks, self.signers, deny, clock=clock)
        if settings.rate_limit_enabled:
            self.limiter = RateLimiter(
                self.redis,
                window_seconds=settings.rate_limit_window_seconds,
                per_subject=settings.rate_limit_per_subject,
                per_client=settings.rate_limit_per_client,
                anonymous_per_address=settings.rate_limit_anonymous_per_address,
                sync_seconds=settings.rate_limit_sync_seconds,
                clock=clock,
            )
            self.limiter.start()
        if settings.audit_denials:
            self.auditor = DenialAuditor(
                SignedClient(self._http, settings.audit_url, self.signers["audit"]),
                queue_size=settings.audit_queue_size,
                batch_size=settings.audit_batch_size,
                flush_seconds=settings.audit_flush_seconds,
                request_timeout=settings.audit_request_timeout_seconds,
                window_seconds=settings.audit_denial_window_seconds,
                max_keys=settings.audit_denial_max_keys,
                clock=clock,
            )
            self.auditor.start()
        if settings.gateway_access_log:
            self.access_log = AccessLog(settings.service_name)
            if self.access_log.enabled:
                self.access_log.start()
            else:
                self.access_log = None
        for service in self.pools:  # exported from the start, so rate() and alerts see a zero, not a gap
            metrics.upstream_pool_waits.labels(service)
            metrics.response_streamed.labels(service)  # (increase() misses a counter's first value)
            metrics.response_cutoffs.labels(service)
        request_metrics = self.request_metrics = metrics.RequestMetrics()
        proofs = settings.proof_verifier(settings.dpop_nonce_keys, clock)
        # every replica's proofs in one Redis window (jti used once), a local one meanwhile
        self.replays = ReplayGuard(self.redis, "dpop-jti", proofs.window_seconds, clock=clock)
        self.edge = Edge(
            routes=self.routes,
            verifier=verifier,
            forwarder=Forwarder(
                self.pools,
                request_metrics,
                read_ahead=ReadAhead(settings.gateway_response_buffer_bytes),
                stream_seconds=settings.upstream_read_timeout_seconds,
            ),
            cors=self.cors,
            limiter=self.limiter,
            auditor=self.auditor,
            request_metrics=request_metrics,
            max_body_bytes=settings.max_body_bytes,
            access_log=self.access_log,
            forwarded=ForwardedHeaders(settings.gateway_trusted_proxies, settings.gateway_proxy_header),
            max_in_flight_per_subject=settings.in_flight_limit,
            request_body_budget=settings.gateway_request_body_buffer_bytes,
            proofs=proofs,
            replays=self.replays,
            clock=clock,
        )
        # Everything allocated so far (modules, settings, keys, pools) lives as long as the worker:
        # move it out of the collector's generations so that full collections, which otherwise scan
        # the whole heap and show up as tens of milliseconds in the p99, only look at request garbage.
        gc.collect()
        gc.freeze()
        self._warming = asyncio.ensure_future(self._warm())
        self._pool_waits = dict.fromkeys(self.pools, 0)
        self._tasks = [
            PeriodicTask("gateway-key-ages", KEY_AGE_INTERVAL_SECONDS, self._key_ages, clock=clock),
            PeriodicTask("gateway-jwks-refresh", JWKS_MAINTAIN_SECONDS, self._maintain_keys, clock=clock),
            PeriodicTask(
                "gateway-metrics", metrics.RequestMetrics.FLUSH_SECONDS, self._flush_metrics, clock=clock
            ),
        ]
        for task in self._tasks:
            task.start()

    async def keys_ready(self) -> None:
        """Readiness: a gateway that cannot verify any token must not take traffic; one whose
        provider is down but whose cached keys are still usable can, and does."""
        if self.jwks is None or not self.jwks.ready():
            raise CheckFailed("no trusted issuer has usable signing keys")

    async def _warm(self) -> None:
        assert self.jwks is not None
        try:
            await self.jwks.warm()
        except Exception:  # warming is an optimisation; requests fetch on demand
            log.warning("warming the JWKS cache failed", exc_info=True)

    async def _maintain_keys(self) -> None:
        assert self.jwks is not None
        self.jwks.maintain()

    async def _key_ages(self) -> None:
        assert self.jwks is not None
        self.jwks.update_ages()

    async def _flush_metrics(self) -> None:
        self.flush_metrics()

    def flush_metrics(self) -> None:
        """Request metrics and the pools' figures, written once a second, never per request.

        Synchronous and public for the tests: prometheus' registry is the process's, so a test beside
        other gateways in the same process (each flushing its own figures into the same gauges) runs
        this flush and reads the gauges with nothing else running in between."""
        if self.request_metrics is not None:
            self.request_metrics.flush()
        if self.edge is not None:
            counts = self.edge.in_flight.counts.values()
            metrics.requests_in_flight.set(sum(counts))
            metrics.requests_in_flight_busiest.set(max(counts, default=0))
        waits = self._pool_waits
        for service, pool in self.pools.items():
            metrics.upstream_connections.labels(service, "busy").set(pool.open - pool.idle)
            metrics.upstream_connections.labels(service, "idle").set(pool.idle)
            if pool.waits > waits[service]:
                metrics.upstream_pool_waits.labels(service).inc(pool.waits - waits[service])
                waits[service] = pool.waits

    async def stop(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warming
        await stop_all(self._tasks)
        if self.revocations is not None:
            await self.revocations.stop()
        if self.limiter is not None:
            await self.limiter.stop()
        if self.auditor is not None:
            await self.auditor.stop()
        if self.jwks is not None:
            await self.jwks.close()
        if self.access_log is not None:
            await self.access_log.stop()
        if self.request_metrics is not None:
            self.request_metrics.flush()
        for pool in self.pools.values():
            await pool.close()
        await self._http.close()
        if self.replays is not None:
            await self.replays.close()
        if self.redis is not None:
            await self.redis.close()


def openapi_route(table: RouteTable) -> Route:
    """``GET /api/openapi.json``: the client-facing document (:mod:`gateway.openapi`), public (no
    token: it describes how to get one and what to send), built once per worker."""
    body = json.dumps(openapi.document(table)).encode()

    async def serve(request: Request) -> Response:
        return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    return Route(OPENAPI_PATH, serve, methods=["GET"], include_in_schema=False)


class GatewayApp:
    """Dispatch: ``/api`` and ``/api/…`` to the edge (but the public ``/api/openapi.json``), everything
    else (and lifespan) to ``web``. Served by :class:`gateway.serving.GatewayHttpProtocol`
    (``http_protocol``), which makes the same dispatch itself and calls the edge directly."""

    http_protocol = GatewayHttpProtocol

    def __init__(self, gateway: Gateway, web: Starlette) -> None:
        self.gateway = gateway
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # "/api" in any case or spelling goes to the edge, which refuses whatever is not literally
        # /api/… (gateway.stages.check_target) instead of letting the SPA's routes answer for it; the
        # public API document is the one /api path the web app serves
        if scope["type"] == "http" and is_api_path(scope["path"]):
            edge = self.gateway.edge
            if edge is None:
                raise RuntimeError("the gateway is not started (lifespan did not run)")
            await edge(scope, receive, send)
            return
        await self.web(scope, receive, send)


def check_configuration(settings: GatewaySettings | None = None) -> None:
    """Exit with status 2 and one line if the route table or the issuers file is invalid."""
    settings = settings or load_settings(GatewaySettings)
    try:
        load_routes(settings.gateway_routes_file, frozenset(settings.upstreams))
        load_issuers(settings)
    except (RouteTableError, IssuerConfigError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr, flush=True)
        raise SettingsError(2) from None


def create_app(settings: GatewaySettings | None = None, clock: Clock = SYSTEM_CLOCK) -> GatewayApp:
    if settings is None:
        settings = load_settings(GatewaySettings)
        configure_logging(settings.service_name, settings.log_level)
    try:
        gateway = Gateway(settings, clock)
    except (RouteTableError, IssuerConfigError) as exc:
        # like a bad environment variable: one line naming the problem, exit status 2, no traceback
        print(f"invalid configuration: {exc}", file=sys.stderr, flush=True)
        raise SettingsError(2) from None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    web = create_service_app(
        settings,
        [openapi_route(gateway.routes), *spa_routes(settings)],
        require_identity=False,
        lifespan=lifespan,
        checks={"signing_keys": gateway.keys_ready},
    )
    web.state.gateway = gateway
    return GatewayApp(gateway, web)
