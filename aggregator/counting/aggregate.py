"""Pure aggregation: a batch of one site's events -> the Redis operations that count them.

No I/O here. What is counted follows the catalog (``contracts.aggregates``): every event
adds to every aggregate in every scope (all time, and its minute, hour and day). The result
is applied by ``redis_sink`` in one atomic step together with the Kafka offset it covers.
Increments are merged per key first, so a batch of thousands of events becomes a few
hundred operations.

The page quota: ``to_ops`` given a site's ``max_pages`` adds one quota operation that lists
the pages the batch would name; the script refuses the whole step when some of them would
take the site past its quota and names them, and the caller counts those pages under
``OVERFLOW_PAGE`` (``aggregate``'s ``overflow``) and plans again. Each breakdown dimension
has a quota operation of its own (``Dimension.max_values``), whose refusals come back as
``overflow_token``s, so the same retry folds them into ``(other)`` of that dimension.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from aggregator.counting.dimensions import (
    NOT_A_BROWSER,
    SourceNamer,
    UaClassifier,
    default_classifier,
    default_namer,
    ua_of,
    utm_value,
)
from contracts.aggregates import (
    ALL_TIME,
    BROWSER,
    DEVICE,
    DIMENSION_RANKINGS,
    DIMENSION_VISITORS,
    DIMENSIONS,
    EVENT,
    FILTERED,
    NAMED_PAGES,
    OPCODES,
    OS,
    OVERFLOW_PAGE,
    PAGE_VISITORS,
    SOURCE,
    TOP_PAGES,
    UTM_CAMPAIGN,
    UTM_MEDIUM,
    UTM_SOURCE,
    VIEWS,
    VISITORS,
    Aggregate,
    Dimension,
    Kind,
    Scope,
    expire_at,
    overflow_token,
    scopes_of,
)
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.page_facts import visitor_element
from contracts.settings import Retention
from contracts.timebuckets import MINUTE_MS

CHUNK = 500  # members per operation, well inside Lua's argument limits
FACTS_CHUNK = 150  # pages per page-facts operation (three arguments each)
# The quota checks (not aggregates, so not in the catalog's ``OPCODES``), which the script
# runs before anything is written: a dimension's ``[QUOTA, its all-time ranking key, its
# tag, max_values, *values]``; the pages' ``[PAGE_QUOTA, all-time named pages counter, the
# overflow page's all-time facts hash, max_pages, *(page, its all-time facts hash)]``.
QUOTA = "q"
PAGE_QUOTA = "n"

Target = tuple[Aggregate, Scope, str | None]  # an aggregate, its scope, the page if per page


@dataclass(slots=True)
class PageFact:
    """What a batch adds to one page in one scope."""

    views: int = 0
    visitors: set[str] = field(default_factory=set)


@dataclass(slots=True)
class SiteDelta:
    """What a batch adds to one site's aggregates, merged per key (pages per scope)."""

    counters: Counter[Target] = field(default_factory=Counter)
    rankings: dict[Target, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    uniques: dict[Target, set[str]] = field(default_factory=lambda: defaultdict(set))
    pages: dict[Scope, dict[str, PageFact]] = field(default_factory=lambda: defaultdict(dict))

# The dimensions a page view counts in, in the order ``aggregate`` reads their values.
_VIEW_DIMENSIONS = (SOURCE, UTM_SOURCE, UTM_MEDIUM, UTM_CAMPAIGN, DEVICE, BROWSER, OS)


def aggregate(events: Iterable[PageView], overflow: Collection[str] = (),
              classifier: UaClassifier | None = None, namer: SourceNamer | None = None
              ) -> SiteDelta:
    """Pre-count first: views per (page, minute) and visitors per (page, minute), one step
    an event; then spread each of those few groups over its scopes (a minute lies in one
    hour, one day and all time) and each aggregate, with the set unions done in C. Pages
    in ``overflow`` (refused by the site's quota) count as ``OVERFLOW_PAGE``, and so do
    dimension values whose ``overflow_token`` is there.

    The breakdowns come from the raw event here (``dimensions``), so a replay recounts
    them: a bot adds only to ``FILTERED``; a named event (not a page view) only to the
    ``EVENT`` dimension; a page view to the page aggregates and every other dimension,
    unless it came through our own formats with nothing to break down (no User-Agent,
    referrer or UTM tag: ``(direct)``/``(unknown)`` would copy the site's views and visitors
    into four more rankings and HyperLogLogs each, for no information)."""
    classify = (classifier or default_classifier()).classify
    source_of = (namer or default_namer()).source_of
    views: Counter[tuple[str, int]] = Counter()
    visitors: dict[tuple[str, int], set[str]] = defaultdict(set)
    # A page view's values in ``_VIEW_DIMENSIONS`` order, pre-counted per (minute, values)
    # like pages: a site's events share few combinations (all of /track's are one), and
    # tuples of strings hash in C.
    profiles: Counter[tuple[int, tuple[str | None, ...]]] = Counter()
    profile_visitors: dict[tuple[int, tuple[str | None, ...]], set[str]] = defaultdict(set)
    named: Counter[tuple[int, str]] = Counter()
    named_visitors: dict[tuple[int, str], set[str]] = defaultdict(set)
    bots: Counter[int] = Counter()
    for e in events:
        minute = e.ts // MINUTE_MS
        own = e.via is None and e.user_agent is None  # /track, /events: no UA, no lists
        facts = NOT_A_BROWSER if own else classify(ua_of(e.user_agent, e.via))
        if facts.bot:
            bots[minute] += 1
            continue
        if e.name is not None:
            named[(minute, e.name)] += 1
            named_visitors[(minute, e.name)].add(e.user_id)
            continue
        page = e.page_id
        if overflow and page in overflow:
            page = OVERFLOW_PAGE
        key = (page, minute)
        views[key] += 1
        visitors[key].add(e.user_id)
        if own and e.referrer is None and e.utm_source is None and e.utm_medium is None \
                and e.utm_campaign is None:
            continue  # nothing to break down (see above)
        profile = (minute, (source_of(e.referrer, e.host), utm_value(e.utm_source),
                            utm_value(e.utm_medium), utm_value(e.utm_campaign),
                            facts.device, facts.browser, facts.os))
        profiles[profile] += 1
        profile_visitors[profile].add(e.user_id)

    def member(dimension: Dimension, value: str) -> str:
        if overflow and overflow_token(dimension, value) in overflow:
            return OVERFLOW_PAGE
        return value

    dim_views: Counter[tuple[Dimension, str, int]] = Counter()
    dim_visitors: dict[tuple[Dimension, str, int], set[str]] = defaultdict(set)
    for (minute, values), n in profiles.items():
        users = profile_visitors[(minute, values)]
        for dimension, value in zip(_VIEW_DIMENSIONS, values, strict=True):
            if value is not None:
                at = (dimension, member(dimension, value), minute)
                dim_views[at] += n
                dim_visitors[at] |= users
    for (minute, name), n in named.items():
        at = (EVENT, member(EVENT, name), minute)
        dim_views[at] += n
        dim_visitors[at] |= named_visitors[(minute, name)]

    delta = SiteDelta()
    counters, rankings, uniques, pages = (delta.counters, delta.rankings, delta.uniques,
                                          delta.pages)
    scopes_by_minute: dict[int, tuple[Scope, ...]] = {}  # a batch spans a few minutes

    def scopes(minute: int) -> tuple[Scope, ...]:
        found = scopes_by_minute.get(minute)
        if found is None:
            found = scopes_by_minute[minute] = scopes_of(minute * MINUTE_MS)
        return found

    for (page, minute), n in views.items():
        users = visitors[(page, minute)]
        for scope in scopes(minute):
            counters[(VIEWS, scope, None)] += n
            uniques[(VISITORS, scope, None)].update(users)
            fact = pages[scope].get(page)
            if fact is None:
                fact = pages[scope][page] = PageFact()
            fact.views += n
            fact.visitors |= users
    for (dimension, value, minute), n in dim_views.items():
        ranking = DIMENSION_RANKINGS[dimension]
        for scope in scopes(minute):
            rankings[(ranking, scope, None)][value] += n
    for (dimension, value, minute), users in dim_visitors.items():
        per_value = DIMENSION_VISITORS[dimension]
        for scope in scopes(minute):
            uniques[(per_value, scope, value)].update(users)
    for minute, n in bots.items():
        for scope in scopes(minute):
            counters[(FILTERED, scope, None)] += n
    return delta


def count_bots(events: Iterable[PageView], classifier: UaClassifier | None = None) -> int:
    """How many of ``events`` ``aggregate`` counts only as filtered (for ``/metrics``)."""
    classify = (classifier or default_classifier()).classify
    return sum(1 for e in events if classify(ua_of(e.user_agent, e.via)).bot)


@dataclass(slots=True)
class RedisOps:
    """Keys and compact operations for the apply script (see ``redis_sink.APPLY_SCRIPT``).

    Keys are referenced by 1-based index into ``keys`` (index 1 is the offsets hash, 2 the
    site's generation pointer; ``generation`` is the one the keys belong to). Every
    operation is ``[opcode, key, expire_at, *arguments]`` (expire_at 0: never), the opcode
    being the kind's (``contracts.aggregates.OPCODES``): ``i`` INCRBY n, ``z`` ZINCRBY of
    each (page, -views) pair (rankings hold negated views), ``p`` PFADD members, ``f`` the
    page facts of one hash: ``[f, hash, expire_at, leaderboard, named pages counter, the
    promoted HyperLogLogs' name without the page, *(page, views, its visitor elements
    back to back)]``; or a quota check (``QUOTA``, ``PAGE_QUOTA``), which writes nothing.
    Visitors travel as ``contracts.page_facts.visitor_element``s.
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
        candidates = sorted(p for p in delta.pages.get(ALL_TIME, ()) if p != OVERFLOW_PAGE)
        if candidates:
            out.ops.append([PAGE_QUOTA, out.key(site.key(NAMED_PAGES, ALL_TIME)),
                            out.key(site.facts_of(ALL_TIME, OVERFLOW_PAGE)), max_pages,
                            *(x for p in candidates
                              for x in (p, out.key(site.facts_of(ALL_TIME, p))))])
    for dimension in DIMENSIONS:  # each dimension's quota: the script tags what it refuses
        ranking = DIMENSION_RANKINGS[dimension]
        values = delta.rankings.get((ranking, ALL_TIME, None))
        if values:
            candidates = sorted(v for v in values if v != OVERFLOW_PAGE)
            if candidates:
                out.ops.append([QUOTA, out.key(site.key(ranking, ALL_TIME)),
                                overflow_token(dimension, ""), dimension.max_values,
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
        members = sorted(map(_element, users))
        for start in range(0, len(members), CHUNK):
            out.ops.append([*head(target), *members[start:start + CHUNK]])
    for scope, facts in delta.pages.items():
        _facts_ops(out, site, scope, facts, retention)
    return out


_element = functools.lru_cache(maxsize=1 << 17)(visitor_element)  # pure: visitors recur


def _facts_ops(out: RedisOps, site: SiteKeys, scope: Scope, facts: dict[str, PageFact],
               retention: Retention) -> None:
    """The page facts operations of one scope: one per hash (and ``FACTS_CHUNK`` pages)."""
    ttl = None if scope.unit is None else retention.ttl_of(scope.unit)
    at = expire_at(scope, ttl)
    top, named = out.key(site.key(TOP_PAGES, scope)), out.key(site.key(NAMED_PAGES, scope))
    promoted = site.key(PAGE_VISITORS, scope, "")
    by_hash: dict[str, list[str]] = defaultdict(list)
    for page in sorted(facts):
        by_hash[site.facts_of(scope, page)].append(page)
    for name, members in by_hash.items():
        for start in range(0, len(members), FACTS_CHUNK):
            args: list[object] = [OPCODES[Kind.FACTS], out.key(name), at, top, named, promoted]
            for page in members[start:start + FACTS_CHUNK]:
                fact = facts[page]
                args += (page, fact.views, "".join(sorted(map(_element, fact.visitors))))
            out.ops.append(args)
