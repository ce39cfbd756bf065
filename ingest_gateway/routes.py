"""The gateway's HTTP handlers: ``POST /track``, ``POST /events``, CORS preflight, probes."""

from __future__ import annotations

from aiohttp import web

from contracts.event import InvalidEvent, ValidationPolicy, validate_batch
from contracts.fast_events import accept_json
from contracts.httpkit import error_response, json_response, readiness_response
from ingest_gateway.admission import DEPS, Rejected, check_sites, publish
from ingest_gateway.body import BodyError, events_of_body, read_body


def _cors_headers(request: web.Request, origins: tuple[str, ...]) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    if "*" in origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


async def preflight(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    headers = _cors_headers(request, deps.settings.cors_origins)
    if headers:
        headers.update({
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Content-Encoding",
            "Access-Control-Max-Age": "86400",
        })
    return web.Response(status=204, headers=headers)


def rejection_response(rejected: Rejected, cors: dict[str, str]) -> web.Response:
    """A refusal from the shared tail (``admission``) in the project's error shape."""
    headers = dict(cors)
    if rejected.retry_after is not None:
        headers["Retry-After"] = rejected.retry_after
        if cors and rejected.status == 429:  # a page's script may read when to retry
            headers["Access-Control-Expose-Headers"] = "Retry-After"
    return error_response(rejected.status, rejected.code, rejected.message, rejected.details,
                          headers=headers, extra=rejected.extra)


async def _ingest(request: web.Request, *, batch: bool) -> web.Response:
    deps = request.app[DEPS]
    s = deps.settings
    cors = _cors_headers(request, s.cors_origins)
    try:
        body = await read_body(request, limit=s.max_body_bytes, batch=batch)
        policy = ValidationPolicy(now_ms=deps.clock_ms(), late_window_ms=s.late_window_ms)
        events = accept_json(body.data, batch=batch, max_events=s.max_batch_events,
                             policy=policy, new_event_id=deps.new_event_id
                             ) if body.is_json else None
        if events is None:  # NDJSON, or a body to refuse: the path that explains why
            raws = events_of_body(body.data, body.kind, "identity", limit=s.max_body_bytes,
                                  max_events=s.max_batch_events, batch=batch)
            events = validate_batch(raws, policy, deps.new_event_id)
        checked = check_sites(deps, [e.site_id for e in events], request.headers.get("Origin"))
    except BodyError as exc:
        deps.metrics.bodies_rejected.labels(exc.code).inc()
        if exc.events:
            deps.metrics.rejected.labels(exc.code).inc(exc.events)
        return error_response(exc.status, exc.code, exc.message, exc.details(), headers=cors)
    except InvalidEvent as exc:
        deps.metrics.rejected.labels("validation_failed").inc(len({e.index for e in exc.errors}))
        details = [e.as_dict() if batch else {**e.as_dict(), "index": 0} for e in exc.errors]
        return error_response(400, "validation_failed", "some events are invalid; "
                              "nothing was accepted", details, headers=cors)
    if isinstance(checked, Rejected):
        return rejection_response(checked, cors)
    outcome = await publish(deps, checked, events)
    if isinstance(outcome, Rejected):
        return rejection_response(outcome, cors)
    return json_response({"accepted": len(events), "event_ids": outcome.event_ids},
                         status=202, headers=cors)


async def track(request: web.Request) -> web.Response:
    return await _ingest(request, batch=False)


async def events(request: web.Request) -> web.Response:
    return await _ingest(request, batch=True)


async def readyz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    return readiness_response({"kafka": deps.publisher.ready, "sites": deps.registry.loaded})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/track", track)
    app.router.add_post("/events", events)
    app.router.add_route("OPTIONS", "/track", preflight)
    app.router.add_route("OPTIONS", "/events", preflight)
    app.router.add_get("/readyz", readyz)
