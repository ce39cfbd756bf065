"""The tracker formats' HTTP handlers: Plausible's ``POST /api/event``, Umami's
``POST /api/send`` and ``POST /api/batch``, and their CORS preflights.

Parsing is pure (``compat_plausible``, ``compat_umami``); this module reads the body, gives
each event its id and visitor, and sends it through the tail every format shares
(``admission``): the same registry, rate limit, pseudonym and Kafka acknowledgement as
``/track``. Only the answers differ, in each tool's own shape: a tracker must not be
surprised (Umami's script.js stops for good on a ``disabled`` key, so none is sent).

The client address (``client_address``) and the User-Agent enter the visitor hash and
nothing else; the address is never logged, published or put in an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from contracts.event import PageView, ValidationPolicy
from contracts.httpkit import json_response
from contracts.tenancy import Registry
from ingest_gateway.admission import DEPS, Accepted, GatewayDeps, Rejected, check_sites, publish
from ingest_gateway.body import BodyError, read_limited
from ingest_gateway.client_address import address_of
from ingest_gateway.compat_plausible import PlausibleError, events_of_plausible
from ingest_gateway.compat_umami import Ignored, UmamiError, event_of_umami, loads
from ingest_gateway.tracked import Tracked, page_view
from ingest_gateway.visitor import SaltUnavailable, visitor_id

MAX_EVENT_BODY = 64 * 1024  # /api/event and /api/send: one event (NGINX's limit too)
MAX_BATCH_ELEMENTS = 1000
ACCEPTED_TYPES = frozenset({"", "text/plain", "application/json"})
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Retry-After"}
PREFLIGHT = {"Access-Control-Allow-Origin": "*",
             "Access-Control-Allow-Methods": "POST, OPTIONS",
             # x-umami-cache: older script.js sends it; it is allowed and ignored.
             "Access-Control-Allow-Headers": "Content-Type, x-umami-cache",
             "Access-Control-Max-Age": "86400"}
UMAMI_CODES = {400: "bad-request", 403: "forbidden", 413: "payload-too-large",
               415: "unsupported-media-type", 429: "too-many-requests",
               503: "service-unavailable"}


async def preflight(_: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT)


async def _body(request: web.Request, limit: int) -> bytes:
    """BodyError (415 or 413) unless the body is JSON text within ``limit`` bytes: the
    trackers send ``text/plain`` (no preflight) or ``application/json``."""
    if request.content_type.lower() not in ACCEPTED_TYPES \
            and request.headers.get("Content-Type", "") != "":
        raise BodyError(415, "unsupported_media_type", "Content-Type must be text/plain or "
                        "application/json")
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise BodyError(415, "unsupported_encoding", "Content-Encoding is not supported here")
    return await read_limited(request, limit)


def _unavailable(reason: str) -> Rejected:
    return Rejected(503, "unavailable", "visitor ids cannot be derived now; retry later",
                    [{"index": None, "field": None, "reason": reason}], retry_after="2",
                    extra={"reason": reason})


async def _page_views(request: web.Request, deps: GatewayDeps, tracked: Sequence[Tracked],
                      now: int, via: str) -> list[PageView] | Rejected:
    """Each tracked event with its id and visitor: the tracker's own id when it sent one,
    else the keyed hash of site, client address and User-Agent under today's salt."""
    user_agent = request.headers.get("User-Agent", "")
    salt = None
    if any(t.user_id is None for t in tracked):
        if deps.salts is None:
            deps.metrics.salt_fetch.inc()
            return _unavailable("salt_unavailable")
        try:
            salt = await deps.salts.today()
        except SaltUnavailable:
            deps.metrics.salt_fetch.inc()
            return _unavailable("salt_unavailable")
    address = address_of(request.remote, request.headers.get("X-Real-IP"),
                         deps.trusted_proxies)
    events = []
    for t in tracked:
        user_id = t.user_id
        if user_id is None:
            assert salt is not None
            user_id = visitor_id(salt, t.site_id, address, user_agent)
        events.append(page_view(t, event_id=deps.new_event_id(), user_id=user_id,
                                user_agent=user_agent, ts=now if t.ts is None else t.ts,
                                received_at=now, via=via))
    return events


async def _admit(request: web.Request, deps: GatewayDeps, registry: Registry,
                 tracked: Sequence[Tracked], now: int, via: str) -> Accepted | Rejected:
    checked = check_sites(deps, [t.site_id for t in tracked], request.headers.get("Origin"))
    if isinstance(checked, Rejected):
        return checked
    events = await _page_views(request, deps, tracked, now, via)
    if isinstance(events, Rejected):
        return events
    outcome = await publish(deps, checked, events)
    if isinstance(outcome, Accepted):
        deps.metrics.tracker_events.labels(via).inc(len(events))
    return outcome


def _headers(rejected: Rejected) -> dict[str, str]:
    if rejected.retry_after is None:
        return dict(CORS)
    return {**CORS, "Retry-After": rejected.retry_after}


def _plausible_refusal(rejected: Rejected) -> web.Response:
    """Plausible's ``{"errors": {field: [message]}}`` with our status."""
    if rejected.code in {"site_not_allowed", "origin_not_allowed"}:
        body: dict[str, Any] = {"errors": {"domain": [str(d["reason"])
                                                     for d in rejected.details]}}
    else:
        body = {"errors": {"request": [rejected.message]}}
    return json_response(body, status=rejected.status, headers=_headers(rejected))


async def plausible_event(request: web.Request) -> web.Response:
    """``POST /api/event``: 202 ``ok`` once Kafka holds the event (one per site named)."""
    deps = request.app[DEPS]
    try:
        tracked = events_of_plausible(await _body(request, MAX_EVENT_BODY))
    except BodyError as exc:
        deps.metrics.bodies_rejected.labels(exc.code).inc()
        return json_response({"errors": {"request": [exc.message]}}, status=exc.status,
                             headers=CORS)
    except PlausibleError as exc:
        deps.metrics.rejected.labels("validation_failed").inc()
        return json_response(exc.body(), status=400, headers=CORS)
    registry = check_sites(deps, [], None)
    if isinstance(registry, Rejected):
        return _plausible_refusal(registry)
    outcome = await _admit(request, deps, registry, tracked, deps.clock_ms(), "plausible")
    if isinstance(outcome, Rejected):
        return _plausible_refusal(outcome)
    return web.Response(status=202, text="ok", headers=CORS)


def _umami_error(status: int, message: str, retry_after: str | None = None) -> web.Response:
    body = UmamiError(message, status, UMAMI_CODES.get(status, "bad-request")).body()
    headers = dict(CORS) if retry_after is None else {**CORS, "Retry-After": retry_after}
    return json_response(body, status=status, headers=headers)


def _umami_refusal(rejected: Rejected) -> web.Response:
    message = rejected.message
    if rejected.code in {"site_not_allowed", "origin_not_allowed"}:
        message = "; ".join(str(d["reason"]) for d in rejected.details)
    return _umami_error(rejected.status, message, rejected.retry_after)


async def _umami(request: web.Request, *, batch: bool) -> web.Response:
    deps = request.app[DEPS]
    limit = deps.settings.max_body_bytes if batch else MAX_EVENT_BODY
    try:
        body = loads(await _body(request, limit))
    except BodyError as exc:
        deps.metrics.bodies_rejected.labels(exc.code).inc()
        return _umami_error(exc.status, exc.message)
    except UmamiError as exc:
        return _umami_error(exc.status, exc.message)
    registry = check_sites(deps, [], None)  # the website lookup needs the registry
    if isinstance(registry, Rejected):
        return _umami_refusal(registry)
    now = deps.clock_ms()
    policy = ValidationPolicy(now_ms=now, late_window_ms=deps.settings.late_window_ms)
    if batch and (not isinstance(body, list) or len(body) > MAX_BATCH_ELEMENTS):
        return _umami_error(400, f"A batch is a JSON array of at most {MAX_BATCH_ELEMENTS} "
                            "events.")
    elements: list[object] = body if isinstance(body, list) and batch else [body]
    tracked: list[Tracked] = []
    errors: list[dict[str, Any]] = []
    for index, element in enumerate(elements):
        try:
            parsed = event_of_umami(element, registry.site_of_umami, policy)
        except UmamiError as exc:
            errors.append({"index": index, "response": exc.body()})
            continue
        if not isinstance(parsed, Ignored):
            tracked.append(parsed)
    if errors:
        deps.metrics.rejected.labels("validation_failed").inc(len(errors))
    if not batch and errors:
        error = errors[0]["response"]["error"]
        return _umami_error(error["status"], error["message"])
    event_ids: list[str] = []
    if tracked:
        outcome = await _admit(request, deps, registry, tracked, now, "umami")
        if isinstance(outcome, Rejected):
            return _umami_refusal(outcome)
        event_ids = outcome.event_ids
    answer: dict[str, Any] = {"accepted": len(event_ids), "event_ids": event_ids}
    if batch:
        answer = {"size": len(elements), "processed": len(elements) - len(errors),
                  "errors": len(errors), "details": errors, **answer}
    return json_response(answer, status=200, headers=CORS)


async def umami_send(request: web.Request) -> web.Response:
    """``POST /api/send``: 200 once Kafka holds the event (``identify`` and the like: 200,
    nothing published)."""
    return await _umami(request, batch=False)


async def umami_batch(request: web.Request) -> web.Response:
    """``POST /api/batch``: a JSON array of ``/api/send`` bodies; invalid elements are listed
    in ``details`` by index, the valid ones are answered once Kafka holds them all."""
    return await _umami(request, batch=True)


def add_compat_routes(app: web.Application) -> None:
    for path, handler in (("/api/event", plausible_event), ("/api/send", umami_send),
                          ("/api/batch", umami_batch)):
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, preflight)
