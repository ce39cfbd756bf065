"""Small HTTP pieces every aiohttp service shares: JSON errors, request metrics, probes.

Lives in ``contracts`` so the three services agree on the error shape and the probe
endpoints without importing each other. No I/O happens at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(status: int, code: str, message: str,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    body.update(extra or {})
    return json_response(body, status=status, headers=headers)


# Any other method is counted as "OTHER": a label value per raw method would let anyone grow
# /metrics (and the process) without bound by sending made-up methods.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class HttpMetrics:
    """Per-app Prometheus registry (no global registry, so apps in one test don't collide).

    Each request's children are looked up in plain dicts (bound once per route, method and
    status: a ``labels()`` call takes a lock and builds a key every time), and the in-flight
    gauge reads a plain counter at scrape time."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.in_flight = Gauge("http_requests_in_flight", "HTTP requests being served",
                               registry=self.registry)
        self.serving = 0
        self.in_flight.set_function(lambda: self.serving)
        self.up = Gauge("service_up", "1 while the service runs", ["service"],
                        registry=self.registry)
        self.up.labels(service).set(1)
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (routes and statuses are bounded: the app's own)."""
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._timed.get(route)
        if histogram is None:
            histogram = self._timed[route] = self.latency.labels(route)
        histogram.observe(seconds)


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_middleware(metrics: HttpMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every error answered as JSON in the one shape, ``details`` included; unexpected
    exceptions logged and answered 500 without saying more. Counts every request by route
    and status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = route_name(request)
        metrics.serving += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if exc.status < 400:
                raise
            return http_error_response(request, exc)
        except Exception:
            log.exception("unhandled_error", extra={"fields": {
                "route": route, "method": request.method, "path": request.path}})
            return whole_request_error(500, "internal_error",
                                       "internal error; see the service log")
        finally:
            metrics.serving -= 1
            metrics.observe(route, request.method, status, time.perf_counter() - started)

    return middleware


@web.middleware
async def nosniff_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``X-Content-Type-Options: nosniff`` on every answer, errors included: a browser then
    never runs a JSON or CSV answer (whose text comes partly from the public: page ids) as a
    script or a page. The outermost middleware of every app, so it sees the error
    middleware's answers too; NGINX adds the same header to its own."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # only when no error middleware is inside
        exc.headers["X-Content-Type-Options"] = "nosniff"
        raise
    if not response.prepared:  # a streamed answer sets its own headers before it starts
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def service_middlewares(metrics: HttpMetrics) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The middlewares every service starts with, outermost first."""
    return [nosniff_middleware, error_middleware(metrics)]


def whole_request_error(status: int, code: str, message: str,
                        headers: dict[str, str] | None = None) -> web.Response:
    """An error about the request as a whole: one detail, with no event index or field."""
    return error_response(status, code, message,
                          [{"index": None, "field": None, "reason": message}], headers=headers)


def http_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (404, 405, ...) in the error shape; a 405 keeps its Allow."""
    code = exc.reason.lower().replace(" ", "_")
    allow = exc.headers.get("Allow")
    if exc.status == 405 and allow is not None:
        message = f"{request.method} is not allowed on {request.path}; allowed: {allow}"
    elif exc.text and exc.text != f"{exc.status}: {exc.reason}":  # a text someone chose
        message = exc.text
    else:
        message = f"{exc.reason}: {request.method} {request.path}"
    return whole_request_error(exc.status, code, message,
                               headers={"Allow": allow} if allow is not None else None)


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    return handle


async def healthz(_: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


def readiness_response(checks: dict[str, bool],
                       reasons: dict[str, str] | None = None) -> web.Response:
    """``reasons``: why a failing check fails (shown as ``reasons`` when there are any)."""
    ready = all(checks.values())
    body: dict[str, object] = {"ready": ready, "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return json_response(body, status=200 if ready else 503)
