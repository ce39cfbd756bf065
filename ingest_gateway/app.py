"""The gateway's app factory: routes, middlewares and the Kafka producer's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web

from contracts.httpkit import healthz, metrics_handler, service_middlewares
from contracts.ids import event_id_factory
from contracts.ingest_openapi import ingest_document
from contracts.privacy import user_id_hasher
from contracts.redis_client import RedisClient, connect_redis_client
from contracts.registry import RegistryCache, RegistrySource, registry_context
from contracts.settings import GatewaySettings
from ingest_gateway.admission import DEPS, GatewayDeps
from ingest_gateway.client_address import trusted_networks
from ingest_gateway.compat_routes import add_compat_routes
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.publisher import KafkaPublisher, Publisher
from ingest_gateway.routes import add_routes
from ingest_gateway.site_limits import SiteRateLimiter
from ingest_gateway.visitor import SaltStore

# aiohttp must not inflate bodies itself: ``body.decode_content`` does, within the limit.
AUTO_DECOMPRESS = False


def create_app(settings: GatewaySettings, publisher: Publisher | None = None,
               clock_ms: Callable[[], int] | None = None,
               registry: RegistrySource | None = None,
               monotonic_s: Callable[[], float] = time.monotonic,
               salts: SaltStore | None = None) -> web.Application:
    """Build the gateway. Tests may pass their own publisher, clocks (wall time for events,
    monotonic time for the sites' rate limits), site registry and salt store; without a
    registry, it is read from MongoDB and refreshed in the background, and the daily salt of
    cookieless visitor ids is shared through Redis (``REDIS_URL``)."""
    metrics = GatewayMetrics()
    clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
    owned = publisher is None
    kafka = KafkaPublisher(settings) if publisher is None else None
    cache = RegistryCache() if registry is None else None
    redis = connect_redis_client(settings.backends.redis_url) \
        if salts is None and registry is None else None
    if redis is not None:
        salts = SaltStore(redis, clock)
    deps = GatewayDeps(settings=settings, publisher=kafka or publisher,  # type: ignore[arg-type]
                       metrics=metrics, clock_ms=clock, new_event_id=event_id_factory(clock),
                       registry=cache or registry,  # type: ignore[arg-type]
                       limiter=SiteRateLimiter(monotonic_s),
                       pseudonym=user_id_hasher(settings.user_id_hash_key)
                       if settings.user_id_hash_key else None,
                       salts=salts, trusted_proxies=trusted_networks(settings.trusted_proxies))
    metrics.follow_in_flight(lambda: deps.publisher.in_flight)
    # Room for a gzip body's framing on top of the decompressed limit.
    app = web.Application(middlewares=service_middlewares(metrics),
                          client_max_size=settings.max_body_bytes + 64 * 1024)
    app[DEPS] = deps
    add_routes(app)
    add_compat_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    document = orjson.dumps(ingest_document())  # describes the code: rendered once

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    if cache is not None:
        app.cleanup_ctx.append(registry_context(cache, settings.backends.mongo_url,
                                                settings.backends.mongo_db))
    if owned and kafka is not None:
        app.cleanup_ctx.append(_producer_ctx(kafka))
    if redis is not None and salts is not None:
        app.cleanup_ctx.append(_salt_ctx(redis, salts))
    return app


def _salt_ctx(redis: RedisClient, salts: SaltStore
              ) -> Callable[[web.Application], AsyncIterator[None]]:
    """Keeps today's salt cached and tomorrow's fetched ahead; closes the Redis client."""
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        refresher = asyncio.create_task(salts.run(), name="salt-refresh")
        yield
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await redis.aclose()
    return ctx


def _producer_ctx(kafka: KafkaPublisher) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        runner = asyncio.create_task(kafka.run(), name="kafka-publisher")
        yield
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await kafka.close()
    return ctx
