"""What the aggregates must be, recounted straightforwardly from the events a test sent, and
a reader that compares them with what Redis holds."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import DatetimeMS
from pymongo.asynchronous.collection import AsyncCollection

from aggregator.counting.dimensions import (
    default_classifier,
    default_namer,
    stored_dims,
    ua_of,
)
from contracts.aggregates import (
    ALL_TIME,
    BROWSER,
    DEVICE,
    DIMENSION_RANKINGS,
    DIMENSION_VISITORS,
    EVENT,
    FILTERED,
    NAMED_PAGES,
    OS,
    PAGE_FACTS,
    PAGE_VISITORS,
    SOURCE,
    TOP_PAGES,
    UTM_CAMPAIGN,
    UTM_MEDIUM,
    UTM_SOURCE,
    VIEWS,
    VISITORS,
    Dimension,
    Scope,
    expire_at,
    parse_suffix,
    scopes_of,
    suffix,
)
from contracts.event import PageView
from contracts.generations import GenerationStore
from contracts.keys import REALTIME_WINDOW_MINUTES, SiteKeys
from contracts.mongo import EVENT_INDEXES, event_document, event_id_of
from contracts.page_facts import INLINE_MAX, LEADERBOARD, group_of, unpack, visitor_element
from contracts.redis_client import RedisClient
from contracts.settings import Retention
from contracts.timebuckets import datetime_to_ms


@dataclass
class Expected:
    """Every aggregate of one site, by its key name within a generation (its suffix); the
    pages' views and visitors by scope (``page_views``, ``page_visitors``), which
    ``expected_keys`` lays out as the page facts, leaderboards and HyperLogLogs hold them."""

    total: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    rankings: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    uniques: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    page_views: dict[Scope, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    page_visitors: dict[tuple[Scope, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))


def recount(events: Iterable[PageView]) -> Expected:
    """Each distinct event identity (site, event id) counted once, in all time and its
    minute, hour and day: exactly what the pipeline promises, counted without its code."""
    seen: set[tuple[str, str]] = set()
    out = Expected()
    for e in events:
        if (e.site_id, e.event_id) in seen:
            continue
        seen.add((e.site_id, e.event_id))
        facts = default_classifier().classify(
            e.user_agent if e.user_agent is not None or e.via is None else "")
        if facts.bot:  # a bot counts only as filtered
            for scope in scopes_of(e.ts):
                out.counters[suffix(FILTERED, scope)] += 1
            continue
        members: list[tuple[Dimension, str | None]] = [(EVENT, e.name)]
        if e.name is None:  # a page view; a named event counts only per name
            out.total += 1
            members = [] if nothing_to_break_down(e) else [
                       (SOURCE, default_namer().source_of(e.referrer, e.host)),
                       (UTM_SOURCE, e.utm_source or None), (UTM_MEDIUM, e.utm_medium or None),
                       (UTM_CAMPAIGN, e.utm_campaign or None), (DEVICE, facts.device),
                       (BROWSER, facts.browser), (OS, facts.os)]
        for scope in scopes_of(e.ts):
            if e.name is None:
                out.counters[suffix(VIEWS, scope)] += 1
                out.page_views[scope][e.page_id] += 1
                out.uniques[suffix(VISITORS, scope)].add(e.user_id)
                out.page_visitors[(scope, e.page_id)].add(e.user_id)
            for dimension, value in members:
                if value is not None:
                    out.rankings[suffix(DIMENSION_RANKINGS[dimension], scope)][value] += 1
                    out.uniques[suffix(DIMENSION_VISITORS[dimension], scope, value)].add(
                        e.user_id)
    return out


def nothing_to_break_down(e: PageView) -> bool:
    """An event of our own formats (no tracker, no User-Agent) with no referrer and no UTM
    tag: it is in no breakdown."""
    return (e.via, e.user_agent, e.referrer, e.utm_source, e.utm_medium,
            e.utm_campaign) == (None,) * 6


async def current_keys(redis: RedisClient, site_id: str) -> SiteKeys:
    """The site's keys in the generation its pointer names (a replay moves it)."""
    return await GenerationStore(redis).current_one(site_id)


async def total_views(redis: RedisClient, site_id: str) -> int:
    return int(await redis.get((await current_keys(redis, site_id)).key(VIEWS, ALL_TIME))
               or 0)


async def hll_estimate(redis: RedisClient, site_id: str, members: Iterable[str]) -> int:
    return (await hll_estimates(redis, site_id, [list(members)]))[0]


async def hll_estimates(redis: RedisClient, site_id: str, member_sets: Sequence[Collection[str]]
                        ) -> list[int]:
    """What a HyperLogLog holding exactly each set of visitors reports (as the pipeline's
    do, as ``contracts.page_facts.visitor_element``s).

    A HyperLogLog's registers depend only on the set added, not on order or repeats, so the
    pipeline's counter must report this number exactly; comparing against it catches a
    missing or extra visitor that a tolerance would hide. Scratch keys share the site's
    hash tag (a scratch generation) so they live in the same cluster slot."""
    member_sets = [sorted({visitor_element(m) for m in members}) for members in member_sets]
    scratch = SiteKeys(site_id, generation=f"test{uuid.uuid4().hex}")
    counts: list[int] = []
    for start in range(0, len(member_sets), 500):
        chunk = [list(members) for members in member_sets[start:start + 500]]
        async with redis.pipeline(transaction=False) as pipe:
            for i, members in enumerate(chunk):
                key = scratch.named(f"scratch:{i}")
                for j in range(0, len(members), 5000):
                    pipe.pfadd(key, *members[j:j + 5000])
                pipe.execute_command("PFCOUNT", key)  # by name: a cluster pipeline
                pipe.execute_command("DEL", key)  # blocks its pfcount() and delete()
            results = await pipe.execute()
        at = 0
        for members in chunk:
            at += -(-len(members) // 5000)  # past its PFADD replies
            counts.append(int(results[at]))
            at += 2  # PFCOUNT, DEL
    return counts


async def _pipelined(redis: RedisClient, calls: Sequence[tuple[str, str]]) -> list[Any]:
    """(command, key) pairs, in pipelines of a few thousand; sent by name, as a cluster
    pipeline refuses some commands' methods (``pfcount``)."""
    out: list[Any] = []
    for start in range(0, len(calls), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for command, key in calls[start:start + 5000]:
                pipe.execute_command(command.upper(), key)
            out += await pipe.execute()
    return out


async def assert_redis_matches(redis: RedisClient, site_id: str, expected: Expected,
                               retention: Retention | None = None) -> None:
    """Every aggregate of the site, exactly, and nothing else: each counter, each ranking
    (negated views, so ranked), each HyperLogLog (which must hold exactly the expected
    visitors: see ``hll_estimates``), the last five minutes as the query API reads them,
    and every key's expiry under the retention the aggregators were given."""
    retention = retention or Retention.from_env(os.environ)
    keys = await current_keys(redis, site_id)
    now_s = time.time()

    def expiry(name: str) -> int:
        scope = parse_suffix(name).scope
        return expire_at(scope, None if scope.unit is None else retention.ttl_of(scope.unit))

    def kept(name: str) -> bool:
        """Buckets past (or within two minutes of) their retention are gone or going."""
        expires = expiry(name)
        return not expires or expires > now_s + 120

    pages = page_layout(expected)
    counters = {n: v for n, v in (expected.counters | pages.counters).items() if kept(n)}
    rankings = {n: v for n, v in (expected.rankings | pages.rankings).items() if kept(n)}
    uniques = {n: v for n, v in (expected.uniques | pages.uniques).items() if kept(n)}
    facts = {n: v for n, v in pages.facts.items() if kept(n)}
    held = {keys.suffix_of(k.decode()) async for k in redis.scan_iter(
        match=keys.generation_match(), count=1000)} - {"offsets"}
    unexpected = {n for n in held - set(counters) - set(rankings) - set(uniques) - set(facts)
                  if kept(n)}
    assert not unexpected, f"keys nothing should have written: {sorted(unexpected)[:5]}"
    assert total_views_of(counters) == expected.total

    async with redis.pipeline(transaction=False) as pipe:
        for name in facts:
            pipe.hgetall(keys.named(name))
        held_facts = await pipe.execute()
    for name, fields in zip(facts, held_facts, strict=True):
        got_facts = {p.decode(): unpack(v.decode()) for p, v in fields.items()}
        assert {p: (v, None if inline is None else frozenset(inline))
                for p, (v, inline) in got_facts.items()} == facts[name], name

    got = await _pipelined(redis, [("get", keys.named(n)) for n in counters])
    wrong = [(n, g, counters[n]) for n, g in zip(counters, got, strict=True)
             if int(g or 0) != counters[n]]
    assert not wrong, f"{len(wrong)} counters differ, e.g. {wrong[:3]}"

    async with redis.pipeline(transaction=False) as pipe:
        for name in rankings:
            pipe.zrange(keys.named(name), 0, -1, withscores=True)
        ranked = await pipe.execute()
    for name, rows in zip(rankings, ranked, strict=True):
        want = sorted(rankings[name].items(), key=lambda pv: (-pv[1], pv[0]))
        assert [(p.decode(), -int(s)) for p, s in rows] == want, name

    names = list(uniques)
    counted = await _pipelined(redis, [("pfcount", keys.named(n)) for n in names])
    estimates = await hll_estimates(redis, site_id, [uniques[n] for n in names])
    wrong_hll = [n for n, got_n, want in zip(names, counted, estimates, strict=True)
                 if got_n != want]
    assert not wrong_hll, f"{len(wrong_hll)} HyperLogLogs differ, e.g. {wrong_hll[:3]}"

    # "Right now": the union of the last five minute buckets, as the query API reads it.
    now_minute = int(now_s) // 60
    recent = [Scope("m", m) for m in range(now_minute - REALTIME_WINDOW_MINUTES + 1,
                                           now_minute + 1)]
    recent_users = set().union(*(expected.uniques.get(suffix(VISITORS, s), set())
                                 for s in recent))
    got_recent = await redis.pfcount(*(keys.key(VISITORS, s) for s in recent))
    want_recent = await hll_estimate(redis, site_id, recent_users)
    assert got_recent == want_recent, (
        f"visitors right now: {got_recent} counted, {want_recent} expected "
        f"({len(recent_users)} visitors in minutes {recent[0].number}-{recent[-1].number})")

    # Expiry: minute and hour keys at their bucket's end plus the retention, the rest never.
    timed = [*counters, *rankings, *uniques, *facts]
    expiries = await _pipelined(redis, [("expiretime", keys.named(n)) for n in timed])
    off = [(n, expiry(n) or -1, got_e) for n, got_e in zip(timed, expiries, strict=True)
           if got_e != (expiry(n) or -1)]
    assert not off, f"{len(off)} keys expire wrongly, e.g. {off[:3]}"


@dataclass
class PageLayout:
    """The pages' aggregates as Redis keeps them (``contracts.page_facts``): by key name,
    each facts hash as {page: (views, its inline visitor elements, None once promoted)}."""

    counters: dict[str, int] = field(default_factory=dict)
    rankings: dict[str, Counter[str]] = field(default_factory=dict)
    uniques: dict[str, set[str]] = field(default_factory=dict)
    facts: dict[str, dict[str, tuple[int, frozenset[str] | None]]] = field(
        default_factory=lambda: defaultdict(dict))


def page_layout(expected: Expected) -> PageLayout:
    """Where ``expected``'s page views and visitors must be: every page in its bucket's facts
    (a 7th visitor promotes it to its own HyperLogLog), the bucket's best pages in its
    leaderboard, and its count of pages."""
    out = PageLayout()
    for scope, views in expected.page_views.items():
        out.counters[suffix(NAMED_PAGES, scope)] = len(views)
        best = sorted(views.items(), key=lambda pv: (-pv[1], pv[0]))[:LEADERBOARD]
        out.rankings[suffix(TOP_PAGES, scope)] = Counter(dict(best))
        for page, n in views.items():
            users = expected.page_visitors[(scope, page)]
            elements = frozenset(visitor_element(u) for u in users)
            promoted = len(elements) > INLINE_MAX
            out.facts[suffix(PAGE_FACTS, scope, str(group_of(page, scope.unit)))][page] = (
                n, None if promoted else elements)
            if promoted:
                out.uniques[suffix(PAGE_VISITORS, scope, page)] = users
    return out


def total_views_of(counters: dict[str, int]) -> int:
    return counters.get(suffix(VIEWS, ALL_TIME), 0)


async def assert_mongo_matches(events: AsyncCollection[dict[str, Any]], site_id: str,
                               sent: Iterable[PageView],
                               positions: dict[str, tuple[int, int]]) -> None:
    """MongoDB holds each event once, every field as sent (``received_at`` too) with the
    Kafka partition and offset it was first written from, and the fallback indexes."""
    expected = {}
    for e in sent:
        if e.event_id not in expected:
            document = event_document(e, *positions[e.event_id])
            dims = stored_dims(ua_of(e.user_agent, e.via), e.referrer, e.host)
            if dims is not None:  # the aggregator's classification, for the fallback
                document["dims"] = dims
            expected[e.event_id] = _comparable(document)
    stored = {event_id_of(doc["_id"]): _comparable(doc)
              async for doc in events.find({"site_id": site_id})}
    assert len(stored) == len(expected)
    wrong = [i for i, doc in expected.items() if stored.get(i) != doc]
    assert not wrong, f"{len(wrong)} documents differ, e.g. {wrong[0]}: " \
        f"{stored.get(wrong[0])} != {expected[wrong[0]]}"
    indexes = {name: [tuple(k) for k in info["key"]]
               for name, info in (await events.index_information()).items()}
    for name, keys in EVENT_INDEXES:
        assert indexes.get(name) == keys, (name, indexes)


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """Datetimes as epoch ms (the server may hand them back naive, in UTC)."""
    return {k: datetime_to_ms(v) if isinstance(v, datetime)
            else int(v) if isinstance(v, DatetimeMS) else v for k, v in doc.items()}
