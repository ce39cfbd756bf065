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
from typing import Any, cast

from pymongo.asynchronous.collection import AsyncCollection

from aggregator.aggregate import expire_at
from contracts.event import PageView
from contracts.keys import REALTIME_WINDOW_MINUTES, SiteKeys
from contracts.mongo import EVENT_INDEXES, event_document
from contracts.redis_client import RedisClient
from contracts.settings import Retention
from contracts.timebuckets import buckets_of, datetime_to_ms


@dataclass
class Expected:
    total: int = 0
    pages: Counter[str] = field(default_factory=Counter)
    buckets: Counter[tuple[str, int]] = field(default_factory=Counter)
    page_buckets: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    visitors: set[str] = field(default_factory=set)
    page_visitors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    bucket_visitors: dict[tuple[str, int], set[str]] = field(
        default_factory=lambda: defaultdict(set))  # (unit, bucket) -> visitors
    bucket_page_visitors: dict[tuple[str, int, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))  # (unit, bucket, page) -> visitors


def recount(events: Iterable[PageView]) -> Expected:
    """Each distinct event id counted once: exactly what the pipeline promises."""
    seen: set[str] = set()
    out = Expected()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        b = buckets_of(e.ts)
        out.total += 1
        out.pages[e.page_id] += 1
        out.visitors.add(e.user_id)
        out.page_visitors[e.page_id].add(e.user_id)
        for unit, bucket in (("m", b.minute), ("h", b.hour), ("d", b.day)):
            out.buckets[(unit, bucket)] += 1
            out.page_buckets[(unit, bucket)][e.page_id] += 1
            out.bucket_visitors[(unit, bucket)].add(e.user_id)
            out.bucket_page_visitors[(unit, bucket, e.page_id)].add(e.user_id)
    return out


async def current_keys(redis: RedisClient, site_id: str) -> SiteKeys:
    """The site's keys in the generation its pointer names (a replay moves it)."""
    pointer = await redis.get(SiteKeys(site_id).generation_pointer())
    if pointer is None:
        return SiteKeys(site_id)
    return SiteKeys(site_id, pointer.decode() if isinstance(pointer, bytes) else pointer)


async def total_views(redis: RedisClient, site_id: str) -> int:
    return int(await redis.get((await current_keys(redis, site_id)).total_views()) or 0)


async def hll_estimate(redis: RedisClient, site_id: str, members: Iterable[str]) -> int:
    return (await hll_estimates(redis, site_id, [list(members)]))[0]


async def hll_estimates(redis: RedisClient, site_id: str, member_sets: Sequence[Collection[str]]
                        ) -> list[int]:
    """What a HyperLogLog holding exactly each set of members reports.

    A HyperLogLog's registers depend only on the set added, not on order or repeats, so the
    pipeline's counter must report this number exactly; comparing against it catches a
    missing or extra visitor that a tolerance would hide. Scratch keys share the site's
    hash tag (a scratch generation) so they live in the same cluster slot."""
    scratch = SiteKeys(site_id, generation=f"test{uuid.uuid4().hex}")
    counts: list[int] = []
    for start in range(0, len(member_sets), 500):
        chunk = [list(members) for members in member_sets[start:start + 500]]
        async with redis.pipeline(transaction=False) as pipe:
            for i, members in enumerate(chunk):
                key = scratch.page_visitors(str(i))
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
    """Every aggregate of the site, exactly: counters, per-page and per-bucket views, every
    HyperLogLog (overall, per page, per bucket, per bucket and page, the last five
    minutes), and every key's expiry under the retention the aggregators were given."""
    retention = retention or Retention.from_env(os.environ)
    keys = await current_keys(redis, site_id)
    assert await total_views(redis, site_id) == expected.total
    ranked = cast(list[tuple[bytes, float]],
                  await redis.zrange(keys.page_views(), 0, -1, withscores=True))
    pages = {p.decode(): int(s) for p, s in ranked}
    assert pages == dict(expected.pages)

    # Buckets past (or within two minutes of) their retention are gone or about to go.
    now_s = time.time()

    def kept(unit: str, bucket: int) -> bool:
        expires = expire_at(unit, bucket, retention)
        return not expires or expires > now_s + 120

    bucket_list = [b for b in sorted(expected.buckets) if kept(*b)]
    async with redis.pipeline(transaction=False) as pipe:
        for unit, bucket in bucket_list:
            pipe.get(keys.bucket_views(unit, bucket))
            pipe.hgetall(keys.bucket_page_views(unit, bucket))
        results = await pipe.execute()
    for i, (unit, bucket) in enumerate(bucket_list):
        assert int(results[2 * i] or 0) == expected.buckets[(unit, bucket)], (unit, bucket)
        got = {k.decode(): int(v) for k, v in results[2 * i + 1].items()}
        assert got == dict(expected.page_buckets[(unit, bucket)]), (unit, bucket)

    # HyperLogLogs: each must hold exactly the expected set (see ``hll_estimates``).
    hlls: list[tuple[str, set[str]]] = [(keys.visitors(), expected.visitors)]
    hlls += [(keys.page_visitors(p), users) for p, users in expected.page_visitors.items()]
    hlls += [(keys.bucket_visitors(u, b), users)
             for (u, b), users in expected.bucket_visitors.items() if kept(u, b)]
    hlls += [(keys.bucket_page_visitors(u, b, p), users)
             for (u, b, p), users in expected.bucket_page_visitors.items() if kept(u, b)]
    counted = await _pipelined(redis, [("pfcount", key) for key, _ in hlls])
    estimates = await hll_estimates(redis, site_id, [users for _, users in hlls])
    wrong = [key for (key, _), got, want in zip(hlls, counted, estimates, strict=True)
             if got != want]
    assert not wrong, f"{len(wrong)} HyperLogLogs differ, e.g. {wrong[:3]}"

    # "Right now": the union of the last five minute buckets, as the query API reads it.
    now_minute = int(now_s) // 60
    recent = range(now_minute - REALTIME_WINDOW_MINUTES + 1, now_minute + 1)
    recent_users = set().union(*(expected.bucket_visitors.get(("m", m), set())
                                 for m in recent))
    assert await redis.pfcount(*(keys.bucket_visitors("m", m) for m in recent)) == (
        await hll_estimate(redis, site_id, recent_users))

    # Expiry: minute and hour keys at their bucket's end plus the retention, the rest never.
    timed: list[tuple[str, int]] = [(k, -1) for k in (keys.total_views(), keys.page_views(),
                                                      keys.visitors())]
    timed += [(keys.page_visitors(p), -1) for p in expected.page_visitors]
    for unit, bucket in bucket_list:
        expiry = expire_at(unit, bucket, retention) or -1
        timed += [(keys.bucket_views(unit, bucket), expiry),
                  (keys.bucket_page_views(unit, bucket), expiry),
                  (keys.bucket_visitors(unit, bucket), expiry)]
    timed += [(keys.bucket_page_visitors(u, b, p), expire_at(u, b, retention) or -1)
              for (u, b, p) in expected.bucket_page_visitors if kept(u, b)]
    expiries = await _pipelined(redis, [("expiretime", key) for key, _ in timed])
    off = [(key, want, got) for (key, want), got in zip(timed, expiries, strict=True)
           if got != want]
    assert not off, f"{len(off)} keys expire wrongly, e.g. {off[:3]}"


async def assert_mongo_matches(events: AsyncCollection[dict[str, Any]], site_id: str,
                               sent: Iterable[PageView],
                               positions: dict[str, tuple[int, int]]) -> None:
    """MongoDB holds each event once, every field as sent (``received_at`` too) with the
    Kafka partition and offset it was first written from, and the fallback indexes."""
    expected = {}
    for e in sent:
        if e.event_id not in expected:
            expected[e.event_id] = _comparable(event_document(e, *positions[e.event_id]))
    stored = {doc["_id"]: _comparable(doc) async for doc in events.find({"site_id": site_id})}
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
    return {k: datetime_to_ms(v) if isinstance(v, datetime) else v for k, v in doc.items()}
