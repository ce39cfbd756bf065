"""Answering from the raw events in MongoDB: exact, and available when Redis is not.

Used when Redis is down, when a range needs buckets Redis no longer keeps (minutes older
than 48 h, hours older than 90 days), and for per-page visitors at minute precision (Redis
keeps per-page HyperLogLogs per hour and day only). Uniques here are exact.

Written for FerretDB 1.24 as well as MongoDB: only ``$match``, ``$group`` and ``$count``;
exactly one accumulator per ``$group`` (FerretDB computes only the first); no date operators
(events carry their ``minute``/``hour``/``day`` bucket numbers as ints); distinct visitors
with two ``$group`` stages; every aggregation carries ``maxTimeMS`` because FerretDB scans.

Called by ``StatsService``; may block on the network; raises pymongo errors when MongoDB is
down or too slow.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from contracts.aggregates import (
    BROWSER,
    DEVICE,
    EVENT,
    MINUTE,
    OS,
    SOURCE,
    UNIT_BY_INTERVAL,
    UTM_CAMPAIGN,
    UTM_MEDIUM,
    UTM_SOURCE,
    Dimension,
)
from query_api.model import Totals
from query_api.ranges import TimeRange

MINUTE_MS = MINUTE.ms
# Page ids one ``$in`` may carry, in UTF-8 bytes. A command over MongoDB's 16 MiB document
# limit is refused by pymongo before it is sent (``DocumentTooLarge``, not a connection
# error, so it would be a 500): 20,000 pages of 512 four-byte characters are 40 MiB. Larger
# lists are asked in pieces, one after another; each piece's pages are disjoint, so their
# answers simply join.
MAX_IN_BYTES = 4 * 1024 * 1024


def pieces_of(pages: list[str], max_bytes: int = MAX_IN_BYTES) -> list[list[str]]:
    """``pages`` in order, cut into lists whose ids total at most ``max_bytes`` (UTF-8,
    plus a few bytes of BSON framing each); a single id is never split. Pure."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for page in pages:
        cost = len(page.encode("utf-8", "surrogatepass")) + 16  # type, index key, length, NUL
        if current and size + cost > max_bytes:
            out.append(current)
            current, size = [], 0
        current.append(page)
        size += cost
    if current:
        out.append(current)
    return out


# Page views only: not a named event (``engagement``, custom events), not a bot (the
# aggregator stores ``dims.bot`` with the raw event; ``aggregator.counting.dimensions``).
PAGE_VIEWS_ONLY: dict[str, Any] = {"name": {"$exists": False}, "dims.bot": {"$ne": True}}


def match_stage(site_id: str, rng: TimeRange, page_id: str | None = None,
                pages: list[str] | None = None, only: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The ``$match`` of every query: the site, the range as whole epoch minutes, a page;
    page views only unless ``only`` says which events instead."""
    query: dict[str, Any] = {"site_id": site_id, **(PAGE_VIEWS_ONLY if only is None else only)}
    if rng.bounded:
        start, end = rng.bounds()
        query["minute"] = {"$gte": start // MINUTE_MS, "$lt": end // MINUTE_MS}
    if page_id is not None:
        query["page_id"] = page_id
    elif pages is not None:
        query["page_id"] = {"$in": pages}
    return {"$match": query}


def count_by(key: str) -> list[dict[str, Any]]:
    """Views per ``key`` (a field name, or ``None`` for one total)."""
    return [{"$group": {"_id": None if key == "" else f"${key}", "n": {"$sum": 1}}}]


def views_by_user() -> list[dict[str, Any]]:
    """Views per visitor: how many there are is the distinct visitors, their sum the views.
    One fetch of the matched events instead of two (a count and a distinct count): FerretDB
    reads and decodes the matched documents once per query."""
    return [{"$group": {"_id": "$user_id", "n": {"$sum": 1}}}]


def distinct_users_by(key: str) -> list[dict[str, Any]]:
    """Distinct visitors per ``key``: group by (key, user), then count per key."""
    first_id: Any = "$user_id" if key == "" else {"k": f"${key}", "u": "$user_id"}
    return [{"$group": {"_id": first_id, "n": {"$sum": 1}}},
            {"$group": {"_id": None if key == "" else "$_id.k", "n": {"$sum": 1}}}]


class MongoReader:
    source = "mongo"

    def __init__(self, events: AsyncCollection[dict[str, Any]], max_time_ms: int = 20_000
                 ) -> None:
        self._events = events
        self._max_time_ms = max_time_ms

    async def ping(self) -> bool:
        await self._events.database.command("ping")
        return True

    async def complete(self) -> bool:
        return True  # every raw event, whatever happened to Redis

    async def _grouped(self, pipeline: list[dict[str, Any]]) -> dict[Any, int]:
        cursor = await self._events.aggregate(pipeline, maxTimeMS=self._max_time_ms)
        return {doc["_id"]: int(doc["n"]) async for doc in cursor}

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        per_user = await self._grouped([match_stage(site_id, rng, page_id), *views_by_user()])
        return Totals(sum(per_user.values()), len(per_user))

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        grouped = await self._grouped([match_stage(site_id, rng), *count_by("page_id")])
        ranked = sorted(((str(p), n) for p, n in grouped.items() if n > 0),
                        key=lambda pv: (-pv[1], pv[0]))
        return len(ranked), ranked[offset:offset + limit]

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        grouped: dict[Any, int] = {}
        for piece in pieces_of(pages):
            grouped.update(await self._grouped([match_stage(site_id, rng, pages=piece),
                                                *distinct_users_by("page_id")]))
        return {page: grouped.get(page, 0) for page in pages}

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        if not slots:
            return []
        unit = UNIT_BY_INTERVAL[interval]
        field = unit.mongo_field
        whole = TimeRange(slots[0].bounds()[0], slots[-1].bounds()[1])
        match = match_stage(site_id, whole, page_id)
        views, uniques = await asyncio.gather(self._grouped([match, *count_by(field)]),
                                              self._grouped([match, *distinct_users_by(field)]))
        numbers = [unit.bucket_of(slot.bounds()[0]) for slot in slots]
        return [Totals(views.get(n, 0), uniques.get(n, 0)) for n in numbers]

    # -- breakdowns (``query_api.redis_breakdowns`` answers the same from Redis) ---------

    async def _by_member(self, site_id: str, rng: TimeRange, dimension: Dimension,
                         distinct: bool) -> dict[str, int]:
        field, only = _BREAKDOWN_FIELDS[dimension]
        grouped = await self._grouped([match_stage(site_id, rng, only=only),
                                       *(distinct_users_by(field) if distinct
                                         else count_by(field))])
        out: dict[str, int] = {}
        for value, n in grouped.items():
            if value is not None and str(value) != SELF_REFERRAL:
                out[str(value)] = out.get(str(value), 0) + n
        return out

    async def breakdown(self, site_id: str, rng: TimeRange, dimension: Dimension,
                        offset: int, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
        views, uniques = await asyncio.gather(
            self._by_member(site_id, rng, dimension, distinct=False),
            self._by_member(site_id, rng, dimension, distinct=True))
        ranked = sorted(((v, n) for v, n in views.items() if n > 0),
                        key=lambda vn: (-vn[1], vn[0]))
        return len(ranked), [(v, n, uniques.get(v, 0)) for v, n in ranked[offset:offset + limit]]

    async def filtered(self, site_id: str, rng: TimeRange) -> int:
        grouped = await self._grouped([match_stage(site_id, rng, only={"dims.bot": True}),
                                       *count_by("")])
        return sum(grouped.values())


SELF_REFERRAL = "(self)"  # ``aggregator.counting.dimensions.SELF_REFERRAL``: not counted
_NAMED = {"name": {"$exists": True}, "dims.bot": {"$ne": True}}
# Per dimension: the field grouped on, and which events count (None: page views). An event
# without the field is not counted: one stored without ``dims`` came through our own formats
# with no User-Agent and no referrer and is in no breakdown, as in Redis
# (``aggregator.counting.aggregate``).
_BREAKDOWN_FIELDS: dict[Dimension, tuple[str, dict[str, Any] | None]] = {
    SOURCE: ("dims.src", None),
    UTM_SOURCE: ("utm_source", None),
    UTM_MEDIUM: ("utm_medium", None),
    UTM_CAMPAIGN: ("utm_campaign", None),
    DEVICE: ("dims.dev", None),
    BROWSER: ("dims.brw", None),
    OS: ("dims.os", None),
    EVENT: ("name", _NAMED),
}
