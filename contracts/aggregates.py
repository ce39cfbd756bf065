"""The catalog of aggregates: each aggregate and each time unit, described once.

Why one table: the aggregator's writer, the Lua apply script, the query API's readers, the
rebuild and its ``--verify`` diff, and the test fakes all follow it, so an aggregate is
added (or its resolution changed) here and nowhere else.

Every aggregate exists for all time and for every time bucket (``Scope``) of every unit.
A key is ``<site's generation>:<aggregate>:<scope>[:<page>]``, for example
``pv:{shop}:g0:views:h490000`` or ``pv:{shop}:g0:uvp:d20424:/pricing``: the page id comes
last, so any page id (``:`` included) parses back unambiguously. The breakdown dimensions
(``Dimension``: source, UTM, device, browser, OS, event) follow the same grammar with a
value in the page's place (``pv:{shop}:g0:usrc:d20424:Google``).

Rankings are sorted sets whose score is the *negated* view count: ``ZRANGE key 0 n-1``
then lists pages by views descending and page id ascending (Redis orders equal scores by
member bytes), the order every endpoint promises, with no sort per request.

Pages are the exception to "one key per member", because a site has thousands and nearly
every one is seen in nearly every bucket: their views and visitors are *page facts*
(``contracts.page_facts``), fields of a few hashes per bucket (the key's member is then the
hash's group number, ``pf:d20424:17``), with a leaderboard of the bucket's best pages
(``top``) and a count of its pages (``np``) beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS


@dataclass(frozen=True, slots=True)
class TimeUnit:
    code: str  # in key names and the scope (``h490000``)
    interval: str  # the API's name (``interval=hour``)
    ms: int
    mongo_field: str  # the bucket number stored on every raw event (``contracts.mongo``)
    default_ttl_s: int | None  # how long a bucket's keys outlive its end; None: forever

    def bucket_of(self, ts_ms: int) -> int:
        return ts_ms // self.ms


MINUTE = TimeUnit("m", "minute", MINUTE_MS, "minute", 48 * 3600)
HOUR = TimeUnit("h", "hour", HOUR_MS, "hour", 90 * 24 * 3600)
DAY = TimeUnit("d", "day", DAY_MS, "day", None)
UNITS: tuple[TimeUnit, ...] = (DAY, HOUR, MINUTE)  # coarsest first: how ranges are tiled
UNIT_BY_CODE = {u.code: u for u in UNITS}
UNIT_BY_INTERVAL = {u.interval: u for u in UNITS}


class Kind(StrEnum):
    """How an aggregate is stored, and the one operation that adds to it."""

    COUNTER = "counter"  # string: INCRBY views
    RANKING = "ranking"  # sorted set page -> -views: ZINCRBY
    UNIQUES = "uniques"  # HyperLogLog of visitor elements: PFADD
    FACTS = "facts"  # hash page -> views and visitors (``contracts.page_facts``)


# The operation code the apply script runs for each kind (``aggregator.counting.aggregate``).
OPCODES: dict[Kind, str] = {Kind.COUNTER: "i", Kind.RANKING: "z", Kind.UNIQUES: "p",
                            Kind.FACTS: "f"}

# The page a site's views are counted under once it has as many named pages (fields of its
# all-time page facts) as its quota (``Site.max_pages``) allows: a page first seen past the
# quota adds to this one page, in every aggregate, so total views and visitors stay exact
# and the page keys stay bounded. Never counted against the quota itself. The gateway refuses
# it as a client's page id (``contracts.event.RESERVED_PAGE_IDS``).
OVERFLOW_PAGE = "(other)"


@dataclass(frozen=True, slots=True, eq=False)  # one object per dimension: hashed by identity
class Dimension:
    """A breakdown other than pages: what its members are, and how many one site may name.

    Its values come from the raw event at aggregation time (``aggregator.counting.
    dimensions``); some are client-controlled (UTM values, event names), so each dimension
    has a quota like pages: past ``max_values`` named members, a new value counts as
    ``OVERFLOW_PAGE`` (``(other)``), which keeps Redis bounded."""

    code: str  # in key names (``rsrc:d20424``, ``usrc:d20424:Google``)
    api_name: str  # ``/stats/breakdown?dimension=``
    max_values: int
    meaning: str


SOURCE = Dimension("src", "source", 1000, "referrer source")
UTM_SOURCE = Dimension("uts", "utm_source", 1000, "utm_source as sent")
UTM_MEDIUM = Dimension("utm", "utm_medium", 1000, "utm_medium as sent")
UTM_CAMPAIGN = Dimension("utc", "utm_campaign", 1000, "utm_campaign as sent")
DEVICE = Dimension("dev", "device", 200, "device type")
BROWSER = Dimension("brw", "browser", 200, "browser")
OS = Dimension("os", "os", 200, "operating system")
EVENT = Dimension("evt", "event", 200, "named events (not page views), counted per name")
DIMENSIONS: tuple[Dimension, ...] = (SOURCE, UTM_SOURCE, UTM_MEDIUM, UTM_CAMPAIGN, DEVICE,
                                     BROWSER, OS, EVENT)
DIMENSION_BY_API_NAME = {d.api_name: d for d in DIMENSIONS}


@dataclass(frozen=True, slots=True, eq=False)  # one object per aggregate: hashed by identity
class Aggregate:
    name: str  # in key names; unique
    kind: Kind
    per_page: bool  # one key per member (a ranking holds members instead): pages or values
    meaning: str
    dimension: Dimension | None = None  # None: pages (or the site as a whole)


VIEWS = Aggregate("views", Kind.COUNTER, False, "page views of the site")
VISITORS = Aggregate("uv", Kind.UNIQUES, False, "unique visitors of the site")
# The page facts, the apply script's one operation (``f``) for a group of pages, also keeps
# the three aggregates after it: they are written nowhere else.
PAGE_FACTS = Aggregate("pf", Kind.FACTS, True,
                       "views and visitors of each page of one group (member: the group)")
TOP_PAGES = Aggregate("top", Kind.RANKING, False,
                      "the best pages by views (contracts.page_facts.LEADERBOARD of them)")
NAMED_PAGES = Aggregate("np", Kind.COUNTER, False, "pages with facts in the bucket")
PAGE_VISITORS = Aggregate("uvp", Kind.UNIQUES, True,
                          "unique visitors of one page, once promoted out of its facts")
# Requests a list recognised as a bot: acknowledged upstream, counted here only as this.
FILTERED = Aggregate("bots", Kind.COUNTER, False, "bot requests acknowledged, not counted")
# One ranking (views per value; for ``EVENT``, events per name) and one visitors HLL per
# value, for every dimension.
DIMENSION_RANKINGS = {d: Aggregate("r" + d.code, Kind.RANKING, False,
                                   f"views of each {d.meaning}, ranked", d) for d in DIMENSIONS}
DIMENSION_VISITORS = {d: Aggregate("u" + d.code, Kind.UNIQUES, True,
                                   f"unique visitors of one {d.meaning}", d) for d in DIMENSIONS}
PAGE_CATALOG: tuple[Aggregate, ...] = (VIEWS, VISITORS, PAGE_FACTS, TOP_PAGES, NAMED_PAGES,
                                       PAGE_VISITORS)
CATALOG: tuple[Aggregate, ...] = (
    *PAGE_CATALOG, FILTERED,
    *(a for d in DIMENSIONS for a in (DIMENSION_RANKINGS[d], DIMENSION_VISITORS[d])))
BY_NAME = {a.name: a for a in CATALOG}


def overflow_token(dimension: Dimension, value: str) -> str:
    """How a dimension's value refused by its quota is named among refused pages (the apply
    script's answer, the callers' ``overflow`` set): the code, a unit separator, the value.
    No page id holds a control character, so the two never collide."""
    return f"{dimension.code}\x1f{value}"


class Scope(NamedTuple):
    """All time (``unit`` None), or one bucket: the epoch-based ``number`` of a ``unit``.
    A named tuple: hashed in C, as it is several times per event."""

    unit: str | None = None  # a unit's code
    number: int = 0

    @property
    def token(self) -> str:
        return "t" if self.unit is None else f"{self.unit}{self.number}"

    @property
    def start_ms(self) -> int:
        return self.number * UNIT_BY_CODE[self.unit or ""].ms

    @property
    def end_ms(self) -> int:
        return (self.number + 1) * UNIT_BY_CODE[self.unit or ""].ms

    @classmethod
    def parse(cls, token: str) -> Scope:
        if token == "t":
            return cls()
        if token[:1] not in UNIT_BY_CODE or not token[1:].lstrip("-").isdigit():
            raise ValueError(f"not a scope: {token!r}")
        return cls(token[0], int(token[1:]))


ALL_TIME = Scope()


def scopes_of(ts_ms: int) -> tuple[Scope, ...]:
    """Every scope an event at ``ts_ms`` counts in: all time and its bucket of each unit."""
    return (ALL_TIME, *(Scope(u.code, u.bucket_of(ts_ms)) for u in UNITS))


def suffix(aggregate: Aggregate, scope: Scope, page: str | None = None) -> str:
    """The key name of an aggregate within a site's generation (see ``SiteKeys.named``)."""
    if aggregate.per_page != (page is not None):
        raise ValueError(f"{aggregate.name} {'needs' if aggregate.per_page else 'takes no'} "
                         "page")
    head = f"{aggregate.name}:{scope.token}"
    return head if page is None else f"{head}:{page}"


@dataclass(frozen=True, slots=True)
class Parsed:
    aggregate: Aggregate
    scope: Scope
    page: str | None


def parse_suffix(name: str) -> Parsed:
    """The aggregate, scope and page a key name (``suffix``) stands for; ValueError for a
    name the catalog does not know."""
    parts = name.split(":", 2)
    if len(parts) < 2 or parts[0] not in BY_NAME:
        raise ValueError(f"not an aggregate: {name!r}")
    aggregate = BY_NAME[parts[0]]
    page = parts[2] if len(parts) == 3 else None
    if aggregate.per_page != (page is not None):
        raise ValueError(f"not an aggregate: {name!r}")
    return Parsed(aggregate, Scope.parse(parts[1]), page)


def expire_at(scope: Scope, ttl_s: int | None) -> int:
    """Absolute expiry (epoch seconds) of a bucket's keys: the bucket's end plus its unit's
    retention, so a rebuild sets the same expiry as live counting did. 0 means never."""
    if scope.unit is None or ttl_s is None:
        return 0
    return scope.end_ms // 1000 + ttl_s

