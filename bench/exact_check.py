"""The exactly-once check at the end of a benchmark: wait for the counts, then compare.

Called by each suite that sent events (ingest, e2e, aggregator) with what it expects for its
own sites (``bench.exactness.Expected``). It waits (bounded by ``BENCH_EXACT_TIMEOUT_S``,
progress every 5 s) until the aggregators have caught up, i.e. every site's ``/stats`` total
has reached the acknowledged number, then the same for its MongoDB documents (counted only
then: a count is slow on FerretDB), then compares and records
the verdict in the run; a failed verdict makes ``python -m bench`` exit non-zero. It reads
only: nothing in the stack is flushed, restarted or deleted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from pymongo import AsyncMongoClient

from bench.exactness import Expected, Observed, Verdict, compare
from bench.progress import say
from bench.results import Run
from bench.settings import BenchSettings
from contracts.mongo import EVENTS

PAGE_LIMIT = 10_000  # /stats pages read when a site's pages are checked


async def _stats(http: aiohttp.ClientSession, s: BenchSettings, exp: Expected
                 ) -> tuple[int | None, dict[str, int] | None]:
    limit = PAGE_LIMIT if exp.pages else 1
    url = f"{s.http_url}/stats"
    try:
        async with http.get(url, params={"site_id": exp.site, "limit": str(limit)},
                            headers=s.stats_headers()) as response:
            if response.status != 200:
                return None, None
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None, None
    total = int(body.get("total_views", 0))
    if not exp.pages:
        return total, None
    if int(body.get("total_pages", 0)) > limit:
        return total, None  # too many pages to read in one answer: not checked
    return total, {p["page_id"]: int(p["views"]) for p in body.get("pages", [])}


async def read_stats(s: BenchSettings, expected: Sequence[Expected]
                     ) -> dict[str, tuple[int | None, dict[str, int] | None]]:
    """Every site's /stats total (and pages, where expected)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        return {exp.site: await _stats(http, s, exp) for exp in expected}


SITE_COUNT_MS = 30_000  # a site's count given up after this: the backend scans


async def read_mongo(s: BenchSettings, sites: Sequence[str], mongo_db: str
                     ) -> dict[str, int | None]:
    """Every site's MongoDB document count (None: not read). One equality count a site
    (what an indexed backend answers from its index: FerretDB on PostgreSQL pushes the
    filter down, a second or two for 40,000 documents on a busy machine); once one is given
    up after ``SITE_COUNT_MS``, the backend scans (FerretDB on SQLite: tens of seconds a scan
    on a loaded machine), so the rest are counted in one ``$match``/``$group`` pass instead
    of one scan each. (A slow count is no sign of a scan: judged by time, a loaded machine
    sent a run to the one pass, which a collection of a million documents made slower than
    its five-minute limit.)"""
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        s.mongo_url, serverSelectionTimeoutMS=5000)
    events = mongo[mongo_db][EVENTS]
    try:
        counts: dict[str, int | None] = {}
        try:
            for site in sites:
                counts[site] = await events.count_documents({"site_id": site},
                                                            maxTimeMS=SITE_COUNT_MS)
            return counts
        except Exception:  # a timeout (or an error): one pass for all
            pass
        rest = [site for site in sites if site not in counts]
        pipeline: list[dict[str, object]] = [
            {"$match": {"site_id": {"$in": rest}}},
            {"$group": {"_id": "$site_id", "n": {"$sum": 1}}}]
        cursor = await events.aggregate(pipeline, maxTimeMS=300_000)
        found = {str(row["_id"]): int(str(row["n"])) async for row in cursor}
        return counts | {site: found.get(site, 0) for site in rest}
    except Exception:  # any store error: "not read"
        return dict.fromkeys(sites)
    finally:
        await mongo.close()


async def _poll(s: BenchSettings, suite: str, what: str, expected: Sequence[Expected],
                read: Callable[[Sequence[Expected]], Awaitable[dict[str, int | None]]],
                deadline: float) -> dict[str, int | None]:
    """Read ``what`` until every site reached its acknowledged count or the deadline."""
    started = last_report = time.monotonic()
    pending = list(expected)
    counts: dict[str, int | None] = {}
    while pending:
        reading = asyncio.ensure_future(read(pending))
        while not (await asyncio.wait({reading}, timeout=10))[0]:  # a count can be slow
            say(suite, f"exactly-once: still reading {what} "
                       f"({time.monotonic() - started:.0f}s)")
        counts.update(reading.result())
        pending = [e for e in pending if (counts.get(e.site) or 0) < e.acked]
        now = time.monotonic()
        if not pending or now > deadline:
            break
        if now - last_report >= 5:
            missing = sum(e.acked - (counts.get(e.site) or 0) for e in pending)
            say(suite, f"exactly-once: waiting for {what}: {len(pending)} of {len(expected)} "
                       f"sites behind, {missing:,} events short ({now - started:.0f}s)")
            last_report = now
        await asyncio.sleep(1.0)
    return counts


async def verify(s: BenchSettings, run: Run, suite: str, expected: Sequence[Expected],
                 mongo_db: str | None) -> Verdict:
    """Wait until every site is caught up in /stats, then in MongoDB (or the deadline:
    ``BENCH_EXACT_TIMEOUT_S`` for both), compare, record, say."""
    expected = [e for e in expected if e.acked or e.ambiguous]
    started = time.monotonic()
    deadline = started + s.exact_timeout_s
    say(suite, f"exactly-once: checking {len(expected)} sites, "
               f"{sum(e.acked for e in expected):,} events acknowledged")
    stats: dict[str, tuple[int | None, dict[str, int] | None]] = {}

    async def totals(pending: Sequence[Expected]) -> dict[str, int | None]:
        stats.update(await read_stats(s, pending))
        return {site: stats[site][0] for site in (e.site for e in pending)}

    await _poll(s, suite, "/stats", expected, totals, deadline)
    stats = await read_stats(s, expected)  # once more, every site with its pages
    mongo: dict[str, int | None] = {}
    if mongo_db is not None:
        say(suite, f"exactly-once: counting MongoDB documents of {len(expected)} sites")

        async def documents(pending: Sequence[Expected]) -> dict[str, int | None]:
            return await read_mongo(s, [e.site for e in pending], mongo_db)

        mongo = await _poll(s, suite, "MongoDB", expected, documents, deadline)
    observed = {e.site: Observed(e.site, *stats[e.site], mongo.get(e.site)) for e in expected}
    verdict = compare(expected, observed, mongo_db is not None)
    waited = round(time.monotonic() - started, 1)
    run.add_check(suite, {**verdict.as_json(), "waited_s": waited,
                          "mongo_checked": mongo_db is not None,
                          "pages_checked": sum(1 for e in expected if e.pages)})
    say(suite, verdict.line() + f" (after {waited:g}s)")
    return verdict
