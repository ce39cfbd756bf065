"""Pure aggregation: a batch of one site's events -> the Redis operations that count them.

No I/O here. The result is applied by ``redis_sink`` in one atomic step together with the
Kafka offset it covers. Increments are merged per key first, so a batch of thousands of
events becomes a few hundred commands.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.settings import Retention
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, buckets_of

UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
PFADD_CHUNK = 500  # members per PFADD, well inside Lua's argument limits


@dataclass(slots=True)
class SiteDelta:
    """What a batch adds to one site's aggregates, merged per key."""

    increments: Counter[tuple[str, int]] = field(default_factory=Counter)  # (unit, bucket)
    page_increments: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    visitors: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    page_visitors: dict[tuple[str, int, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))
    total: int = 0
    pages: Counter[str] = field(default_factory=Counter)
    all_visitors: set[str] = field(default_factory=set)
    all_page_visitors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def aggregate(events: Iterable[PageView]) -> SiteDelta:
    delta = SiteDelta()
    for e in events:
        b = buckets_of(e.ts)
        delta.total += 1
        delta.pages[e.page_id] += 1
        delta.all_visitors.add(e.user_id)
        delta.all_page_visitors[e.page_id].add(e.user_id)
        for unit, bucket in (("m", b.minute), ("h", b.hour), ("d", b.day)):
            delta.increments[(unit, bucket)] += 1
            delta.page_increments[(unit, bucket, e.page_id)] += 1
            delta.visitors[(unit, bucket)].add(e.user_id)
            delta.page_visitors[(unit, bucket, e.page_id)].add(e.user_id)
    return delta


def expire_at(unit: str, bucket: int, retention: Retention) -> int:
    """Absolute expiry (epoch seconds) of a bucket key: its end plus the unit's retention,
    so a rebuild sets the same expiry as live counting did. 0 means never."""
    ttl = retention.ttl_of(unit)
    if ttl is None:
        return 0
    return (bucket + 1) * UNIT_MS[unit] // 1000 + ttl


@dataclass(slots=True)
class RedisOps:
    """Keys and compact operations for the apply script (see ``redis_sink.APPLY_SCRIPT``).

    Ops reference keys by 1-based index into ``keys`` (index 1 is the offsets hash, 2 the
    site's generation pointer; ``generation`` is the one the keys belong to):
    ``["i", k, n, expire_at]`` INCRBY, ``["z", k, member, n]`` ZINCRBY,
    ``["h", k, field, n, expire_at]`` HINCRBY, ``["p", k, expire_at, *members]`` PFADD.
    """

    keys: list[str]
    ops: list[list[object]]
    generation: str
    _index: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> int:
        if name not in self._index:
            self.keys.append(name)
            self._index[name] = len(self.keys)
        return self._index[name]


def to_ops(site: SiteKeys, delta: SiteDelta, retention: Retention) -> RedisOps:
    out = RedisOps(keys=[], ops=[], generation=site.generation)
    out.key(site.applied_offsets())
    out.key(site.generation_pointer())
    out.ops.append(["i", out.key(site.total_views()), delta.total, 0])
    pages_key = out.key(site.page_views())
    for page, n in delta.pages.items():
        out.ops.append(["z", pages_key, page, n])
    _pfadd(out, out.key(site.visitors()), 0, delta.all_visitors)
    for page, users in delta.all_page_visitors.items():
        _pfadd(out, out.key(site.page_visitors(page)), 0, users)
    for (unit, bucket), n in delta.increments.items():
        out.ops.append(["i", out.key(site.bucket_views(unit, bucket)), n,
                        expire_at(unit, bucket, retention)])
    for (unit, bucket, page), n in delta.page_increments.items():
        out.ops.append(["h", out.key(site.bucket_page_views(unit, bucket)), page, n,
                        expire_at(unit, bucket, retention)])
    for (unit, bucket), users in delta.visitors.items():
        _pfadd(out, out.key(site.bucket_visitors(unit, bucket)),
               expire_at(unit, bucket, retention), users)
    for (unit, bucket, page), users in delta.page_visitors.items():
        _pfadd(out, out.key(site.bucket_page_visitors(unit, bucket, page)),
               expire_at(unit, bucket, retention), users)
    return out


def _pfadd(out: RedisOps, key_index: int, expiry: int, members: set[str]) -> None:
    ordered = sorted(members)
    for start in range(0, len(ordered), PFADD_CHUNK):
        out.ops.append(["p", key_index, expiry, *ordered[start:start + PFADD_CHUNK]])
