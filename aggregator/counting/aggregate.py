"""Pure aggregation: a batch of one site's events -> the Redis operations that count them.

No I/O here. What is counted follows the catalog (``contracts.aggregates``): every event
adds to every aggregate in every scope (all time, and its minute, hour and day). The result
is applied by ``redis_sink`` in one atomic step together with the Kafka offset it covers.
Increments are merged per key first, so a batch of thousands of events becomes a few
hundred operations.

The page quota: ``to_ops`` given a site's ``max_pages`` adds one quota operation that lists
the pages the batch would name; the script refuses the whole step when some of them would
take the site past its quota and names them, and the caller counts those pages under
``OVERFLOW_PAGE`` (``aggregate``'s ``overflow``) and plans again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from contracts.aggregates import (
    ALL_TIME,
    CATALOG,
    OPCODES,
    OVERFLOW_PAGE,
    RANKING,
    Aggregate,
    Kind,
    Scope,
    expire_at,
    scopes_of,
)
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.settings import Retention
from contracts.timebuckets import MINUTE_MS

CHUNK = 500  # members per operation, well inside Lua's argument limits
# The quota check: ``[QUOTA, all-time ranking key, 0, max_pages, *pages]`` (not an aggregate,
# so not in the catalog's ``OPCODES``); the script runs it before anything is written.
QUOTA = "q"

Target = tuple[Aggregate, Scope, str | None]  # an aggregate, its scope, the page if per page


@dataclass(slots=True)
class SiteDelta:
    """What a batch adds to one site's aggregates, merged per key."""

    counters: Counter[Target] = field(default_factory=Counter)
    rankings: dict[Target, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    uniques: dict[Target, set[str]] = field(default_factory=lambda: defaultdict(set))


_COUNTERS = [a for a in CATALOG if a.kind is Kind.COUNTER]
_RANKINGS = [a for a in CATALOG if a.kind is Kind.RANKING]
_UNIQUES = [a for a in CATALOG if a.kind is Kind.UNIQUES]


def aggregate(events: Iterable[PageView], overflow: Collection[str] = ()) -> SiteDelta:
    """Pre-count first: views per (page, minute) and visitors per (page, minute), one step
    an event; then spread each of those few groups over its scopes (a minute lies in one
    hour, one day and all time) and each aggregate, with the set unions done in C. Pages
    in ``overflow`` (refused by the site's quota) count as ``OVERFLOW_PAGE``."""
    views: Counter[tuple[str, int]] = Counter()
    visitors: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in events:
        page = e.page_id
        if overflow and page in overflow:
            page = OVERFLOW_PAGE
        key = (page, e.ts // MINUTE_MS)
        views[key] += 1
        visitors[key].add(e.user_id)

    delta = SiteDelta()
    counters, rankings, uniques = delta.counters, delta.rankings, delta.uniques
    scopes_by_minute: dict[int, tuple[Scope, ...]] = {}  # a batch spans a few minutes

    def scopes(minute: int) -> tuple[Scope, ...]:
        found = scopes_by_minute.get(minute)
        if found is None:
            found = scopes_by_minute[minute] = scopes_of(minute * MINUTE_MS)
        return found

    for (page, minute), n in views.items():
        for scope in scopes(minute):
            for agg in _COUNTERS:
                counters[(agg, scope, page if agg.per_page else None)] += n
            for agg in _RANKINGS:
                rankings[(agg, scope, page if agg.per_page else None)][page] += n
    for (page, minute), users in visitors.items():
        for scope in scopes(minute):
            for agg in _UNIQUES:
                uniques[(agg, scope, page if agg.per_page else None)].update(users)
    return delta


@dataclass(slots=True)
class RedisOps:
    """Keys and compact operations for the apply script (see ``redis_sink.APPLY_SCRIPT``).

    Keys are referenced by 1-based index into ``keys`` (index 1 is the offsets hash, 2 the
    site's generation pointer; ``generation`` is the one the keys belong to). Every
    operation is ``[opcode, key, expire_at, *arguments]`` (expire_at 0: never), the opcode
    being the kind's (``contracts.aggregates.OPCODES``): ``i`` INCRBY n, ``z`` ZINCRBY of
    each (page, -views) pair (rankings hold negated views), ``p`` PFADD members; or the
    quota check (``QUOTA``), which writes nothing.
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


def to_ops(site: SiteKeys, delta: SiteDelta, retention: Retention,
           max_pages: int | None = None) -> RedisOps:
    """The operations of ``delta``; with ``max_pages``, first the quota check of the pages
    it names (all but ``OVERFLOW_PAGE``, which is always admitted)."""
    out = RedisOps(keys=[], ops=[], generation=site.generation)
    out.key(site.applied_offsets())
    out.key(site.generation_pointer())
    if max_pages is not None:
        named: Counter[str] = delta.rankings.get((RANKING, ALL_TIME, None), Counter())
        candidates = sorted(p for p in named if p != OVERFLOW_PAGE)
        if candidates:
            out.ops.append([QUOTA, out.key(site.key(RANKING, ALL_TIME)), 0, max_pages,
                            *candidates])
    heads: dict[tuple[Aggregate, Scope], tuple[str, str, int]] = {}  # a few per batch

    def head(target: Target) -> list[object]:
        agg, scope, page = target
        known = heads.get((agg, scope))
        if known is None:
            ttl = None if scope.unit is None else retention.ttl_of(scope.unit)
            name = site.key(agg, scope, "" if agg.per_page else None)
            known = heads[(agg, scope)] = (OPCODES[agg.kind], name, expire_at(scope, ttl))
        opcode, name, at = known
        return [opcode, out.key(name if page is None else name + page), at]

    for target, n in delta.counters.items():
        out.ops.append([*head(target), n])
    for target, pages in delta.rankings.items():
        pairs = [x for page in sorted(pages) for x in (page, -pages[page])]
        for start in range(0, len(pairs), 2 * CHUNK):
            out.ops.append([*head(target), *pairs[start:start + 2 * CHUNK]])
    for target, users in delta.uniques.items():
        members = sorted(users)
        for start in range(0, len(members), CHUNK):
            out.ops.append([*head(target), *members[start:start + CHUNK]])
    return out
