"""The query API's handlers: parse parameters, ask ``StatsService``, shape JSON or CSV.

Each endpoint composes its answer from the four questions of ``model.StatsReader``, so the
Redis and MongoDB answers have the same shape and numbers. Parameter errors are a 400 naming
the parameter; neither store answering is a 503; never a 5xx for any input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from contracts.aggregates import DAY, DIMENSION_BY_API_NAME, HOUR, MINUTE, UNIT_BY_INTERVAL
from contracts.httpkit import (
    error_response,
    readiness_response,
    whole_request_error,
)
from contracts.registry import RegistrySource
from contracts.settings import QuerySettings
from query_api import params
from query_api.answer_cache import AnswerCache
from query_api.auth import GRANT
from query_api.csv_out import Cell, csv_response
from query_api.model import RangeTooCostly, StatsReader, Totals
from query_api.ranges import REALTIME_MINUTES, TimeRange, parse_range, period_range
from query_api.service import Busy, StatsService, Unavailable
from query_api.sites import SITES
from query_api.tiling import scope_count, slot_count, slots

RANGE_PARAMS = frozenset({"site_id", "period", "from", "to", "format"})
# The query parameters each endpoint accepts (others are a 400); the OpenAPI test checks
# that /openapi.json lists exactly these.
ENDPOINT_PARAMS: dict[str, frozenset[str]] = {
    "/stats": RANGE_PARAMS | {"page_id", "limit", "offset", "compare"},
    "/stats/compare": RANGE_PARAMS | {"page_id"},
    "/stats/pages/{page_id}": RANGE_PARAMS,
    "/stats/timeseries": RANGE_PARAMS | {"page_id", "interval"},
    "/stats/top": RANGE_PARAMS | {"by", "limit"},
    "/stats/breakdown": RANGE_PARAMS | {"dimension", "limit", "offset"},
    "/stats/realtime": frozenset({"site_id", "format"}),
    "/stats/sites": frozenset({"format"}),
}
MAX_SERIES_POINTS = 10_000
DEFAULT_TOP = 10
MAX_SITES = 10_000  # site ids per /stats/sites answer; total_sites counts them all
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a handler produces: the JSON body, and the CSV rendering of its items."""

    body: dict[str, Any]
    columns: tuple[str, ...]
    rows: list[dict[str, Cell]]
    sources: tuple[str, ...]
    name: str
    _json: list[bytes] = field(default_factory=list)  # the body encoded, once

    def json(self) -> bytes:
        """The JSON body, encoded once however often the answer cache hands it out."""
        if not self._json:
            self._json.append(orjson.dumps(self.body))
        return self._json[0]


@dataclass(frozen=True, slots=True)
class QueryDeps:
    settings: QuerySettings
    service: StatsService
    answers: AnswerCache[Answer]  # one per app: identical requests share one computation


DEPS = web.AppKey("query_deps", QueryDeps)
REGISTRY = web.AppKey("registry", RegistrySource)  # the tokens (contracts.registry)


def answer_key(request: web.Request, fmt: str) -> Hashable:
    """What makes two requests the same question: the path as sent, the query parameters
    in name order (``?a=1&b=2`` is ``?b=2&a=1``; a repeated name keeps its values' order,
    since handlers read the first), the output format and what the token may read
    (``/stats/sites`` answers differ by it; admin tokens and no auth share one). Not the
    method; the token was checked by the auth middleware before."""
    items = sorted(request.query.items(), key=lambda item: item[0])
    grant = request.get(GRANT)
    scope = grant.sites if grant is not None and not grant.admin else None
    return request.rel_url.raw_path, tuple(items), fmt, scope


def endpoint(build: Callable[[web.Request, StatsService], Awaitable[Answer]]) -> Handler:
    """Wraps a builder: format negotiation, single flight and the answer cache (successful
    answers only), 400s and 503s, the source header."""

    async def compute(request: web.Request, deps: QueryDeps) -> Answer:
        """The answer within the request deadline: every store call of the request
        together (compare's two ranges, a ranking then its visitors) ends before NGINX
        would give up on it."""
        limit_s = deps.settings.request_timeout_ms / 1000
        try:
            async with asyncio.timeout(limit_s):
                return await build(request, deps.service)
        except TimeoutError:
            raise Unavailable(f"the answer took longer than {limit_s:g} s; ask for a "
                              "shorter range, or retry later") from None

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            fmt = params.output_format(request.query, request.headers.get("Accept", ""))
            deps = request.app[DEPS]
            answer = await deps.answers.get_or_compute(answer_key(request, fmt),
                                                       lambda: compute(request, deps))
        except params.BadParameter as exc:
            return error_response(400, "bad_parameter", str(exc),
                                  [{"field": exc.name, "reason": exc.reason}])
        except RangeTooCostly as exc:
            name = "from" if "from" in request.query else "period"
            return error_response(400, "bad_parameter", f"{name}: {exc}",
                                  [{"field": name, "reason": str(exc)}])
        except Busy as exc:
            return whole_request_error(503, "busy", str(exc), headers={"Retry-After": "2"})
        except Unavailable as exc:
            return whole_request_error(503, "unavailable", str(exc),
                                       headers={"Retry-After": "5"})
        headers = {"X-Stats-Source": ", ".join(dict.fromkeys(answer.sources)),
                   "Cache-Control": "no-store", "Vary": "Accept"}
        if fmt == "csv":
            return csv_response(answer.columns, answer.rows, headers, answer.name)
        return web.Response(body=answer.json(), headers=headers,
                            content_type="application/json")

    return handle


def _range(request: web.Request, service: StatsService, default: str = "all") -> TimeRange:
    return parse_range(request.query, service.clock_ms(), default)


def _bounded(rng: TimeRange, name: str = "period") -> TimeRange:
    if not rng.bounded:
        raise params.BadParameter(name, "needs a bounded range: from/to, or a period other "
                                        "than all")
    return rng


def _page_reads(request: web.Request, pages: int, rng: TimeRange, name: str) -> None:
    """Refuse what would read more than ``max_page_buckets`` per-page visitor counts: a
    400 that says how to ask for less, never a request that holds Redis."""
    most = request.app[DEPS].settings.max_page_buckets
    buckets = scope_count(rng)
    if pages * buckets > most:
        raise params.BadParameter(name, (
            f"asks for the unique visitors of {pages:,} pages over {buckets:,} time buckets; "
            f"one request reads at most {most:,} (pages x buckets): ask for "
            "fewer pages, or a range on whole hours or days (fewer buckets)"))


def _change(current: int, previous: int) -> dict[str, Any]:
    percent = None if previous == 0 else round((current - previous) * 100 / previous, 2)
    return {"absolute": current - previous, "percent": percent}


def _comparison(rng: TimeRange, current: Totals, previous: Totals) -> dict[str, Any]:
    prev_from, prev_to = rng.previous().iso()
    return {
        "previous": {"from": prev_from, "to": prev_to, "total_views": previous.views,
                     "unique_visitors": previous.unique_visitors},
        "change": {"total_views": _change(current.views, previous.views),
                   "unique_visitors": _change(current.unique_visitors,
                                              previous.unique_visitors)},
    }


def _comparison_rows(current: Totals, previous: Totals) -> list[dict[str, Cell]]:
    rows: list[dict[str, Cell]] = []
    for metric, now, before in (("total_views", current.views, previous.views),
                                ("unique_visitors", current.unique_visitors,
                                 previous.unique_visitors)):
        change = _change(now, before)
        rows.append({"metric": metric, "current": now, "previous": before,
                     "change": change["absolute"], "change_percent": change["percent"]})
    return rows


async def _previous_totals(service: StatsService, rng: TimeRange, site: str,
                           page: str | None) -> tuple[Totals, str]:
    """The totals of the range of equal length just before ``rng``, and their source."""
    previous = rng.previous()
    return await service.answer([previous], lambda r: r.totals(site, previous, page))


COMPARE_COLUMNS = ("metric", "current", "previous", "change", "change_percent")
PAGE_COLUMNS = ("page_id", "views", "unique_visitors")


async def stats(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats"])
    site = params.site_id(query)
    page = params.page_id(query.get("page_id"))
    limit, offset = params.limit_offset(query)
    compare = params.choice(query, "compare", ("previous_period",), None)
    rng = _range(request, service)
    if compare:
        _bounded(rng, "compare")
    if page is None:
        _page_reads(request, limit, rng, "limit")

    async def ask(reader: StatsReader) -> tuple[Totals, int, list[dict[str, Any]], int]:
        if page is not None:
            totals, bots = await asyncio.gather(reader.totals(site, rng, page),
                                                reader.filtered(site, rng))
            window = [(page, totals.views)] if totals.views and offset == 0 else []
            total_pages = 1 if totals.views else 0
            uniques = {page: totals.unique_visitors}
        else:
            totals, (total_pages, window), bots = await asyncio.gather(
                reader.totals(site, rng, None), reader.ranked_pages(site, rng, offset, limit),
                reader.filtered(site, rng))
            uniques = await reader.page_uniques(site, rng, [p for p, _ in window])
        pages = [{"page_id": p, "views": v, "unique_visitors": uniques[p]} for p, v in window]
        return totals, total_pages, pages, bots

    (totals, total_pages, pages, bots), source = await service.answer([rng], ask)
    sources = [source]
    start, end = rng.iso()
    body: dict[str, Any] = {
        "site_id": site, "from": start, "to": end, "total_views": totals.views,
        "unique_visitors": totals.unique_visitors, "total_pages": total_pages,
        "filtered_bots": bots, "limit": limit, "offset": offset, "pages": pages}
    if page is not None:
        body["page_id"] = page
    if compare:
        previous, prev_source = await _previous_totals(service, rng, site, page)
        sources.append(prev_source)
        body.update(_comparison(rng, totals, previous))
    return Answer(body, PAGE_COLUMNS, pages, tuple(sources), "stats")


async def compare(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/compare"])
    site = params.site_id(query)
    page = params.page_id(query.get("page_id"))
    rng = _bounded(_range(request, service, default="7d"))
    current, source = await service.answer([rng], lambda r: r.totals(site, rng, page))
    previous, prev_source = await _previous_totals(service, rng, site, page)
    start, end = rng.iso()
    body: dict[str, Any] = {"site_id": site, "page_id": page, "from": start, "to": end,
                            "total_views": current.views,
                            "unique_visitors": current.unique_visitors,
                            **_comparison(rng, current, previous)}
    return Answer(body, COMPARE_COLUMNS, _comparison_rows(current, previous),
                  (source, prev_source), "compare")


async def page_stats(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/pages/{page_id}"])
    site = params.site_id(query)
    page = params.page_id(request.match_info["page_id"])
    assert page is not None
    rng = _range(request, service)
    totals, source = await service.answer([rng], lambda r: r.totals(site, rng, page))
    start, end = rng.iso()
    row: dict[str, Cell] = {"page_id": page, "views": totals.views,
                            "unique_visitors": totals.unique_visitors}
    body = {"site_id": site, "from": start, "to": end, **row}
    return Answer(body, PAGE_COLUMNS, [row], (source,), "page")


def _default_interval(rng: TimeRange) -> str:
    start, end = rng.bounds()
    length = end - start
    if length <= 3 * HOUR.ms:
        return MINUTE.interval
    return HOUR.interval if length <= 3 * DAY.ms else DAY.interval


async def timeseries(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/timeseries"])
    site = params.site_id(query)
    page = params.page_id(query.get("page_id"))
    rng = _bounded(_range(request, service, default="7d"))
    interval = params.choice(query, "interval", tuple(UNIT_BY_INTERVAL), None)
    interval = interval or _default_interval(rng)
    if slot_count(rng, interval) > MAX_SERIES_POINTS:
        raise params.BadParameter("interval", f"gives more than {MAX_SERIES_POINTS} buckets "
                                              "for this range; choose a coarser one")
    parts = slots(rng, interval)
    series, source = await service.answer(
        parts, lambda r: r.series(site, parts, interval, page))
    rows: list[dict[str, Cell]] = [
        {"bucket": slot.iso()[0], "views": t.views, "unique_visitors": t.unique_visitors}
        for slot, t in zip(parts, series, strict=True)]
    start, end = rng.iso()
    body = {"site_id": site, "page_id": page, "from": start, "to": end, "interval": interval,
            "buckets": rows}
    return Answer(body, ("bucket", "views", "unique_visitors"), rows, (source,), "timeseries")


async def top(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/top"])
    site = params.site_id(query)
    by = params.choice(query, "by", ("views", "unique_visitors"), "views")
    limit = params.bounded_int(query, "limit", DEFAULT_TOP, 1, params.MAX_LIMIT)
    rng = _range(request, service)
    _page_reads(request, limit, rng, "limit")
    most = request.app[DEPS].settings.max_page_buckets // scope_count(rng)

    async def ask(reader: StatsReader) -> list[dict[str, Cell]]:
        if by == "views":
            _, ranked = await reader.ranked_pages(site, rng, 0, limit)
            views = dict(ranked)
            chosen = [p for p, _ in ranked]
            uniques = await reader.page_uniques(site, rng, chosen)
        else:  # every page's visitors are needed to rank by them
            total, ranked = await reader.ranked_pages(site, rng, 0, most)
            _page_reads(request, total, rng, "by")
            views = dict(ranked)
            uniques = await reader.page_uniques(site, rng, list(views))
            chosen = sorted(views, key=lambda p: (-uniques[p], -views[p], p))[:limit]
        return [{"rank": i + 1, "page_id": p, "views": views[p],
                 "unique_visitors": uniques[p]} for i, p in enumerate(chosen)]

    rows, source = await service.answer([rng], ask)
    start, end = rng.iso()
    body = {"site_id": site, "from": start, "to": end, "by": by, "pages": rows}
    return Answer(body, ("rank", *PAGE_COLUMNS), rows, (source,), "top")


BREAKDOWN_COLUMNS = ("rank", "value", "views", "unique_visitors")


async def breakdown(request: web.Request, service: StatsService) -> Answer:
    """The values of one dimension (source, UTM, device, browser, OS, event) ranked by
    views (for ``event``: events per name), with their unique visitors."""
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/breakdown"])
    site = params.site_id(query)
    name = params.choice(query, "dimension", tuple(DIMENSION_BY_API_NAME), None)
    if name is None:
        raise params.BadParameter("dimension", "is required: one of "
                                  + ", ".join(DIMENSION_BY_API_NAME))
    dimension = DIMENSION_BY_API_NAME[name]
    limit = params.bounded_int(query, "limit", DEFAULT_TOP, 1, params.MAX_LIMIT)
    offset = params.bounded_int(query, "offset", 0, 0, params.MAX_OFFSET)
    rng = _range(request, service)
    _page_reads(request, limit, rng, "limit")

    async def ask(reader: StatsReader) -> tuple[int, list[dict[str, Cell]]]:
        total, window = await reader.breakdown(site, rng, dimension, offset, limit)
        return total, [{"rank": offset + i + 1, "value": v, "views": n, "unique_visitors": u}
                       for i, (v, n, u) in enumerate(window)]

    (total, rows), source = await service.answer([rng], ask)
    start, end = rng.iso()
    body = {"site_id": site, "from": start, "to": end, "dimension": name,
            "total_values": total, "limit": limit, "offset": offset, "rows": rows}
    return Answer(body, BREAKDOWN_COLUMNS, rows, (source,), f"breakdown-{name}")


async def realtime(request: web.Request, service: StatsService) -> Answer:
    query = request.query
    params.reject_unknown(query, ENDPOINT_PARAMS["/stats/realtime"])
    site = params.site_id(query)
    now = service.clock_ms()
    last5 = period_range("realtime", now)
    _, end = last5.bounds()
    last1 = TimeRange(end - MINUTE.ms, end)

    async def ask(reader: StatsReader) -> tuple[Totals, Totals]:
        return (await reader.totals(site, last5, None), await reader.totals(site, last1, None))

    (five, one), source = await service.answer([last5], ask)
    start, _ = last5.iso()
    row: dict[str, Cell] = {"visitors_last_5_minutes": five.unique_visitors,
                            "views_last_minute": one.views,
                            "views_last_5_minutes": five.views}
    body = {"site_id": site, "from": start, "to": last5.iso()[1],
            "window_minutes": REALTIME_MINUTES, **row}
    return Answer(body, tuple(row), [row], (source,), "realtime")


async def sites(request: web.Request, _: StatsService) -> Answer:
    params.reject_unknown(request.query, ENDPOINT_PARAMS["/stats/sites"])
    found, source = await request.app[SITES].sites()
    grant = request.get(GRANT)
    if grant is not None and not grant.admin:  # a token lists only the sites it may read
        found = [s for s in found if grant.allows(s)]
    shown = found[:MAX_SITES]
    rows: list[dict[str, Cell]] = [{"site_id": s} for s in shown]
    body = {"total_sites": len(found), "sites": shown}
    return Answer(body, ("site_id",), rows, (source,), "sites")


async def readyz(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    checks: dict[str, bool] = {}
    for name, reader in (("redis", service.redis), ("mongo", service.mongo)):
        try:
            checks[name] = await reader.ping()
        except Exception:  # readiness reports, it never fails
            checks[name] = False
    if not request.app[DEPS].settings.auth_disabled:
        checks["tokens"] = request.app[REGISTRY].loaded
    return readiness_response(checks)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/stats", endpoint(stats))
    app.router.add_get("/stats/compare", endpoint(compare))
    app.router.add_get("/stats/pages/{page_id:(?s:.+)}", endpoint(page_stats))  # (?s): "\n" too
    app.router.add_get("/stats/timeseries", endpoint(timeseries))
    app.router.add_get("/stats/top", endpoint(top))
    app.router.add_get("/stats/breakdown", endpoint(breakdown))
    app.router.add_get("/stats/realtime", endpoint(realtime))
    app.router.add_get("/stats/sites", endpoint(sites))
    app.router.add_get("/readyz", readyz)
