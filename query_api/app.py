"""The query API's app factory: one cleanup context per client, auth, routes.

The clock is injectable (epoch milliseconds) so tests control "now"; the Redis and MongoDB
clients are created in the cleanup context, never at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge
from pymongo import AsyncMongoClient

from contracts.httpkit import (
    HttpMetrics,
    healthz,
    json_response,
    metrics_handler,
    service_middlewares,
)
from contracts.mongo import EVENTS
from contracts.redis_client import connect_redis_client
from contracts.registry import (
    FixedRegistry,
    RegistryCache,
    RegistrySource,
    registry_context,
)
from contracts.settings import QuerySettings
from contracts.tenancy import EMPTY as EMPTY_REGISTRY
from query_api.answer_cache import OUTCOMES, AnswerCache
from query_api.auth import auth_middleware
from query_api.dashboard import dashboard_routes
from query_api.docs import render_docs
from query_api.model import StatsReader
from query_api.mongo_reader import MongoReader
from query_api.openapi import openapi_document
from query_api.redis_reader import RedisReader
from query_api.routes import DEPS, REGISTRY, Answer, QueryDeps, add_routes
from query_api.service import FallbackGate, StatsService
from query_api.sharded_reader import ShardedReader, shards_of
from query_api.sites import SITES, FixedSites, SiteDirectory, SiteLister

log = logging.getLogger(__name__)
MONGO_TIMEOUT_MS = 2_000  # server selection and connect: fail fast when MongoDB is down


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def docs_routes(app: web.Application) -> None:
    """``/openapi.json`` and ``/docs``, rendered once (they describe the code, not data)."""
    document = openapi_document()
    spec = json_response(document).body
    page = render_docs(document)

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    async def docs(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)


def answer_cache(settings: QuerySettings, metrics: HttpMetrics) -> AnswerCache[Answer]:
    """The app's one answer cache, counting its outcomes in the app's own registry."""
    outcomes = Counter("query_api_answer_cache", "Stats lookups by answer-cache outcome: "
                       "hit (reused), coalesced (joined a running computation), miss",
                       ["outcome"], registry=metrics.registry)
    for outcome in OUTCOMES:
        outcomes.labels(outcome)  # listed at 0 from the start

    def record(outcome: str) -> None:
        outcomes.labels(outcome).inc()

    return AnswerCache(settings.answer_cache_ms / 1000, record=record)


def fallback_gate(settings: QuerySettings, metrics: HttpMetrics) -> FallbackGate:
    """The process's cap on concurrent MongoDB answers, shown in the app's registry."""
    refused = Counter("query_api_mongo_answers_refused", "Requests answered 503 busy: no "
                      "MongoDB slot within MONGO_QUERY_QUEUE_MS", registry=metrics.registry)
    gate = FallbackGate(settings.mongo_max_concurrent, settings.mongo_queue_ms / 1000,
                        on_refused=refused.inc)
    in_use = Gauge("query_api_mongo_answers_in_flight", "Requests being answered from "
                   "MongoDB now (at most MONGO_QUERY_CONCURRENCY)", registry=metrics.registry)
    in_use.set_function(lambda: gate.in_use)
    return gate


def create_app(settings: QuerySettings, clock_ms: Callable[[], int] = system_clock_ms,
               readers: tuple[StatsReader, StatsReader] | None = None,
               sites: SiteLister | None = None,
               registry: RegistrySource | None = None) -> web.Application:
    """``readers`` (Redis-like, MongoDB-like), ``sites`` and ``registry`` (the tokens)
    replace the real clients in app tests; without a registry, tokens are read from MongoDB
    and refreshed in the background (``contracts.registry``)."""
    metrics = HttpMetrics("query_api")
    middlewares = service_middlewares(metrics)
    cache = RegistryCache() if registry is None and readers is None else None
    tokens: RegistrySource = cache or registry or FixedRegistry(EMPTY_REGISTRY)
    if settings.auth_disabled:
        log.warning("auth_disabled", extra={"fields": {
            "detail": "stats are readable without a token; only for a local stack"}})
    else:
        middlewares.append(auth_middleware(tokens))
    app = web.Application(middlewares=middlewares)
    app[REGISTRY] = tokens
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    add_routes(app)
    docs_routes(app)
    dashboard_routes(app)
    answers = answer_cache(settings, metrics)
    gate = fallback_gate(settings, metrics)
    if readers is not None:
        app[DEPS] = QueryDeps(settings=settings, service=StatsService(
            *readers, clock_ms, settings.retention, gate), answers=answers)
        app[SITES] = sites or FixedSites()
        return app

    async def clients(app: web.Application) -> AsyncIterator[None]:
        redis = connect_redis_client(settings.backends.redis_url)
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.backends.mongo_url, serverSelectionTimeoutMS=MONGO_TIMEOUT_MS,
            connectTimeoutMS=MONGO_TIMEOUT_MS)
        events = mongo[settings.backends.mongo_db][EVENTS]
        fallback = MongoReader(events, settings.mongo_query_timeout_ms)
        reader = ShardedReader(redis, RedisReader(redis, settings.max_ranking_entries),
                               shards_of(tokens))
        service = StatsService(reader, fallback, clock_ms, settings.retention, gate)
        app[DEPS] = QueryDeps(settings=settings, service=service, answers=answers)
        app[SITES] = SiteDirectory(redis, events, settings.mongo_query_timeout_ms)
        yield
        await redis.aclose()
        await mongo.close()

    app.cleanup_ctx.append(clients)
    if cache is not None:
        app.cleanup_ctx.append(registry_context(cache, settings.backends.mongo_url,
                                                settings.backends.mongo_db))
    return app
