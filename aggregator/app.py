"""The aggregator's small HTTP side: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from aggregator.metrics import AggregatorMetrics
from contracts.httpkit import healthz, metrics_handler, readiness_response, service_middlewares

Readiness = Callable[[], dict[str, bool]]
Reasons = Callable[[], dict[str, str]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
REASONS: web.AppKey[Reasons] = web.AppKey("reasons")


async def readyz(request: web.Request) -> web.Response:
    return readiness_response(request.app[READINESS](), request.app[REASONS]())


def create_app(metrics: AggregatorMetrics, readiness: Readiness,
               reasons: Reasons = dict) -> web.Application:
    """``readiness`` reports each dependency (consumer running, Mongo, Redis, Kafka);
    ``reasons`` why the failing ones fail (e.g. Redis refusing writes over maxmemory)."""
    app = web.Application(middlewares=service_middlewares(metrics))
    app[READINESS] = readiness
    app[REASONS] = reasons
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    return app
