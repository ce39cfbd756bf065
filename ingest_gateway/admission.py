"""The tail every ingest format shares: which sites are served, each site's rate, the
pseudonym, and Kafka's acknowledgement.

``/track``, ``/events`` and the tracker formats (``compat_routes``) all go through these two
steps, so every format is refused and accepted by the same rules and publishes the same
``PageView`` through the same ``Publisher``. Each step answers with a ``Rejected`` in the
project's own error shape (status, code, message, details); a format with another shape
(Plausible's, Umami's) translates it. Metrics are counted here, once, for every format.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from contracts.event import PageView
from contracts.privacy import pseudonymise
from contracts.registry import RegistrySource
from contracts.settings import GatewaySettings
from contracts.tenancy import Registry
from ingest_gateway.client_address import Network
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.publisher import Publisher, PublishUnavailable
from ingest_gateway.site_limits import (
    Refusal,
    SiteRateLimiter,
    events_by_site,
    retry_after_header,
)
from ingest_gateway.visitor import SaltStore


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
    # The daily salt of cookieless visitor ids (tracker formats only); None: such events
    # are refused with 503 (a gateway built without Redis, as some tests do).
    salts: SaltStore | None = None
    # Peers whose X-Real-IP is believed (NGINX); see client_address.
    trusted_proxies: tuple[Network, ...] = ()


DEPS = web.AppKey("gateway_deps", GatewayDeps)


@dataclass(frozen=True, slots=True)
class Accepted:
    event_ids: list[str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refusal in the project's error shape; ``retry_after`` set for 429 and 503."""

    status: int
    code: str
    message: str
    details: list[dict[str, Any]]
    retry_after: str | None = None
    extra: dict[str, Any] | None = field(default=None)


def check_sites(deps: GatewayDeps, site_ids: Sequence[str], origin: str | None
                ) -> Registry | Rejected:
    """The registry snapshot when every site is served (and, for a browser's request, from
    this origin); else the refusal. Only registered sites are served: an unknown site could
    otherwise grow Redis. A browser's request (it sends ``Origin``) for a site that lists its
    origins must come from one of them, so another web page cannot make its visitors'
    browsers post to that site. (A server-side sender can forge ``Origin``: this is not a
    secret, only a fence for browsers.)"""
    if not deps.registry.loaded:  # MongoDB was never reachable since the start
        return Rejected(503, "unavailable", "the site registry is not loaded yet; retry later",
                        [{"index": None, "field": None, "reason": "site_registry_unavailable"}],
                        retry_after="2", extra={"reason": "site_registry_unavailable"})
    registry = deps.registry.current()
    bad = [(i, s) for i, s in enumerate(site_ids) if not registry.serves(s)]
    if bad:
        deps.metrics.rejected.labels("site_not_allowed").inc(len(bad))
        return Rejected(403, "site_not_allowed", "some events are for a site this deployment "
                        "does not serve; nothing was accepted",
                        [{"index": i, "field": "site_id",
                          "reason": f"site {site!r} is not served here"} for i, site in bad])
    if origin is not None:
        foreign = [(i, s) for i, s in enumerate(site_ids)
                   if (site := registry.sites.get(s)) is not None and site.origins
                   and origin not in site.origins]
        if foreign:
            deps.metrics.rejected.labels("origin_not_allowed").inc(len(foreign))
            return Rejected(403, "origin_not_allowed", "some events are for a site whose "
                            "pages are not served from this origin; nothing was accepted",
                            [{"index": i, "field": "site_id",
                              "reason": f"site {site!r} does not list origin {origin!r}"}
                             for i, site in foreign])
    return registry


def _rate_limited(events: Sequence[PageView], refusals: list[Refusal],
                  deps: GatewayDeps) -> Rejected:
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
    return Rejected(429, "site_rate_limited", "some events are for a site over its ingestion "
                    f"rate; nothing was accepted; retry after {retry_after} s", details,
                    retry_after=retry_after)


def stamp_shards(events: list[PageView], registry: Registry, now_ms: int) -> list[PageView]:
    """Events of hot sites carry their site's shard count: the record, not the registry at
    counting time, decides which unit counts it (``contracts.keys.unit_of``)."""
    hot = {site_id: n for site_id in {e.site_id for e in events}
           if (site := registry.sites.get(site_id)) is not None
           and (n := site.shards_to_stamp(now_ms)) > 1}
    if not hot:
        return events
    return [replace(e, shards=hot[e.site_id]) if e.site_id in hot else e for e in events]


async def publish(deps: GatewayDeps, registry: Registry, events: list[PageView]
                  ) -> Accepted | Rejected:
    """Rate-limit, pseudonymise and publish events of served sites (``check_sites`` first):
    Accepted only once Kafka holds every one of them."""
    if refusals := deps.limiter.admit(events_by_site(events), registry.sites):
        return _rate_limited(events, refusals, deps)
    if deps.pseudonym is not None:  # nothing after the gateway sees the raw id
        events = pseudonymise(events, deps.pseudonym)
    events = stamp_shards(events, registry, int(time.time() * 1000))
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
        return Rejected(503, "unavailable", "events could not be stored in time; retry later "
                        "with the same event_ids",
                        [{"index": None, "field": None, "reason": exc.reason}],
                        retry_after=str(exc.retry_after_s),
                        extra={"reason": exc.reason, "event_ids": event_ids})
    finally:
        deps.metrics.produce_latency.labels(outcome).observe(time.perf_counter() - started)
    deps.metrics.accepted.inc(len(events))
    return Accepted(event_ids)
