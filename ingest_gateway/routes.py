"""The gateway's HTTP handlers: ``POST /track``, ``POST /events``, CORS preflight, probes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from contracts.event import InvalidEvent, PageView, ValidationPolicy, validate_batch
from contracts.fast_events import accept_json
from contracts.httpkit import error_response, json_response, readiness_response
from contracts.privacy import pseudonymise
from contracts.registry import RegistrySource
from contracts.settings import GatewaySettings
from contracts.tenancy import Registry
from ingest_gateway.body import BodyError, events_of_body, read_body
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.publisher import Publisher, PublishUnavailable
from ingest_gateway.site_limits import (
    Refusal,
    SiteRateLimiter,
    events_by_site,
    retry_after_header,
)


@dataclass(frozen=True, slots=True)
class GatewayDeps:
    settings: GatewaySettings
    publisher: Publisher
    metrics: GatewayMetrics
    clock_ms: Callable[[], int]
    new_event_id: Callable[[], str]
    registry: RegistrySource  # the sites this deployment serves (contracts.registry)
    limiter: SiteRateLimiter  # each site's events/s in this process (site_limits)
    # Replaces user_id with its keyed hash before publishing (USER_ID_HASH_KEY); None = off.
    pseudonym: Callable[[str], str] | None = None


DEPS = web.AppKey("gateway_deps", GatewayDeps)


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


def _check_sites(events: list[PageView], registry: Registry, origin: str | None) -> None:
    """Only registered sites are served: an unknown site could otherwise grow Redis. A
    browser's request (it sends ``Origin``) for a site that lists its origins must come
    from one of them, so another web page cannot make its visitors' browsers post to that
    site. (A server-side sender can forge ``Origin``: this is not a secret, only a fence for
    browsers.)"""
    bad = [(i, e.site_id) for i, e in enumerate(events) if not registry.serves(e.site_id)]
    if bad:
        raise _SiteRefused(bad)
    if origin is None:
        return
    foreign = [(i, e.site_id) for i, e in enumerate(events)
               if (site := registry.sites.get(e.site_id)) is not None and site.origins
               and origin not in site.origins]
    if foreign:
        raise _SiteRefused(foreign, origin)


class _SiteRefused(Exception):
    def __init__(self, bad: list[tuple[int, str]], origin: str | None = None) -> None:
        super().__init__("site not allowed")
        self.bad = bad
        self.origin = origin  # set: the sites are served, but not from this origin


def _rate_limited(events: list[PageView], refusals: list[Refusal], deps: GatewayDeps,
                  cors: dict[str, str]) -> web.Response:
    """429 for the whole request: a site is over its events/s in this gateway. Each such
    site is named once, at the index of its first event."""
    first: dict[str, int] = {}
    for i, event in enumerate(events):
        first.setdefault(event.site_id, i)
    deps.metrics.rejected.labels("site_rate_limited").inc(len(events))
    over = {r.site.site_id for r in refusals}
    for site_id, count in Counter(e.site_id for e in events if e.site_id in over).items():
        deps.metrics.site_rate_limited.labels(site_id).inc(count)
    retry_after = retry_after_header(refusals)
    details = [{"index": first[r.site.site_id], "field": "site_id",
                "reason": f"site {r.site.site_id!r} is over its rate limit of "
                          f"{r.site.max_events_per_s} events/s (burst {r.site.burst})"}
               for r in refusals]
    headers = {**cors, "Retry-After": retry_after}
    if cors:  # a page's script may read when to retry
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return error_response(429, "site_rate_limited", "some events are for a site over its "
                          f"ingestion rate; nothing was accepted; retry after {retry_after} s",
                          details, headers=headers)


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
        if not deps.registry.loaded:  # MongoDB was never reachable since the start
            return error_response(503, "unavailable", "the site registry is not loaded yet; "
                                  "retry later", [{"index": None, "field": None,
                                                   "reason": "site_registry_unavailable"}],
                                  headers={**cors, "Retry-After": "2"},
                                  extra={"reason": "site_registry_unavailable"})
        registry = deps.registry.current()
        _check_sites(events, registry, request.headers.get("Origin"))
        if refusals := deps.limiter.admit(events_by_site(events), registry.sites):
            return _rate_limited(events, refusals, deps, cors)
        if deps.pseudonym is not None:  # nothing after the gateway sees the raw id
            events = pseudonymise(events, deps.pseudonym)
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
    except _SiteRefused as exc:
        if exc.origin is not None:
            deps.metrics.rejected.labels("origin_not_allowed").inc(len(exc.bad))
            details = [{"index": i, "field": "site_id",
                        "reason": f"site {site!r} does not list origin {exc.origin!r}"}
                       for i, site in exc.bad]
            return error_response(403, "origin_not_allowed", "some events are for a site "
                                  "whose pages are not served from this origin; nothing was "
                                  "accepted", details, headers=cors)
        deps.metrics.rejected.labels("site_not_allowed").inc(len(exc.bad))
        details = [{"index": i, "field": "site_id", "reason": f"site {site!r} is not served here"}
                   for i, site in exc.bad]
        return error_response(403, "site_not_allowed", "some events are for a site this "
                              "deployment does not serve; nothing was accepted", details,
                              headers=cors)
    event_ids = [e.event_id for e in events]
    started = time.perf_counter()
    outcome = "error"
    try:
        await deps.publisher.publish(events)
        outcome = "ok"
    except PublishUnavailable as exc:
        outcome = "timeout" if exc.reason == "kafka_timeout" else "error"
        deps.metrics.rejected.labels(exc.reason).inc(len(events))
        # The ids let a client retry with the same event_id and be counted once.
        return error_response(503, "unavailable", "events could not be stored in time; "
                              "retry later with the same event_ids",
                              [{"index": None, "field": None, "reason": exc.reason}],
                              headers={**cors, "Retry-After": str(exc.retry_after_s)},
                              extra={"reason": exc.reason, "event_ids": event_ids})
    finally:
        deps.metrics.produce_latency.labels(outcome).observe(time.perf_counter() - started)
    deps.metrics.accepted.inc(len(events))
    return json_response({"accepted": len(events), "event_ids": event_ids}, status=202,
                         headers=cors)


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
