"""The aggregator's small HTTP side: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from aggregator.metrics import AggregatorMetrics
from contracts.httpkit import healthz, metrics_handler, readiness_response, service_middlewares

Readiness = Callable[[], dict[str, bool]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


async def readyz(request: web.Request) -> web.Response:
    return readiness_response(request.app[READINESS]())


def create_app(metrics: AggregatorMetrics,
               readiness: Callable[[], dict[str, bool]]) -> web.Application:
    """``readiness`` reports each dependency (consumer running, Mongo, Redis, Kafka)."""
    app = web.Application(middlewares=service_middlewares(metrics))
    app[READINESS] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    return app
