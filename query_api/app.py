"""The query API's app factory: one cleanup context per client, auth, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from contracts.httpkit import HttpMetrics, error_middleware, healthz, metrics_handler
from contracts.redis_client import connect_redis
from contracts.settings import QuerySettings
from query_api.auth import auth_middleware
from query_api.redis_reader import RedisReader
from query_api.routes import DEPS, QueryDeps, add_routes

log = logging.getLogger(__name__)


def create_app(settings: QuerySettings) -> web.Application:
    metrics = HttpMetrics("query_api")
    middlewares = [error_middleware(metrics)]
    if settings.auth_disabled:
        log.warning("auth_disabled", extra={"fields": {
            "detail": "stats are readable without a token; only for a local stack"}})
    else:
        middlewares.append(auth_middleware(settings.auth_tokens))
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    add_routes(app)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        redis = connect_redis(settings.backends.redis_url)
        app[DEPS] = QueryDeps(settings=settings, reader=RedisReader(redis))
        yield
        await redis.aclose()

    app.cleanup_ctx.append(clients)
    return app
