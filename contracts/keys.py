"""The Redis key layout: where each site's aggregates and markers live.

Every key of one site carries the site as a Redis Cluster hash tag (``{site}``), so a site's
whole update, together with the applied-offset marker it covers, is a single-slot atomic
step, and the same code runs on one Redis or on a cluster. Keys also carry a generation,
so a rebuild can fill a new generation while the current one keeps serving. The names of
the aggregates inside a generation come from the catalog (``contracts.aggregates``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass

from redis.crc import key_slot

from contracts.aggregates import PAGE_FACTS, Aggregate, Scope, suffix
from contracts.page_facts import GROUPS, group_of

PREFIX = "pv"
# The layout of the aggregates (``contracts.aggregates``). A Redis whose aggregates were
# written in another layout is not intact (``intact_key`` names the version): the
# aggregators rebuild it into this layout, as after a loss, and meanwhile the query API
# answers from MongoDB. Raise it whenever the catalog changes what a key holds.
LAYOUT_VERSION = 4  # 4: page facts (contracts.page_facts; issue 18). 3: breakdowns, bots
REALTIME_WINDOW_MINUTES = 5  # "visitors right now": the last five minute buckets
DEFAULT_GENERATION = "0"


# Keys about Redis as a whole share a hash tag no site id can take (site ids are
# [A-Za-z0-9._-]), so a script may touch them together on a cluster.
_META = f"{PREFIX}:{{!meta}}"


# A hot site's aggregates are split over ``shards`` *units* (``make sites ARGS="set shop
# --shards 4"``): unit 0 is the site id itself, so a site that becomes hot keeps what it had
# there, and unit k > 0 is ``site#k.salt`` (``#`` is not a site id character), each its own
# hash tag, so its own Redis Cluster slot. Every event goes whole to the unit of its page, so
# a page's facts, leaderboard entry and visitors live in one unit, and the aggregators apply
# each unit like a site of its own: its own atomic step, applied offsets and generation. The
# query API adds the units up (``query_api.sharded_reader``).
UNIT_MARK = "#"
CLUSTER_SLOTS = 16384
_PLACES = 16  # MAX_SHARDS: unit k's place on the slot ring is k's 4 bits reversed, / 16
_PLACE_WINDOW = CLUSTER_SLOTS // 64


def shard_of(page_id: str, shards: int) -> int:
    """Which of ``shards`` units counts a page; independent of the page facts' own groups
    (``page_facts.group_of``, a CRC), so each unit still fills all of its hashes."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(page_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % shards


@functools.lru_cache(maxsize=4096)
def unit_name(site_id: str, shard: int) -> str:
    """Unit ``shard`` of a site. Its slot is placed, not left to the hash: the first salt
    whose slot lies within 1/64 of the ring after the place of the unit (the site's own slot,
    plus the shard's bits reversed, in sixteenths of the ring: 0, 1/2, 1/4, 3/4, 1/8 ...).
    The first N units are then spread about evenly over the slots for any N, so over the
    masters of a cluster whose masters own equal slot ranges (what ``redis-cli --cluster
    create`` makes): 4 units on 3 masters put at most 2 on one, 8 at most 3. The names do
    not depend on the shard count, so a count that grows keeps its units."""
    if shard == 0:
        return site_id
    place = int(f"{shard:04b}"[::-1], 2) * CLUSTER_SLOTS // _PLACES
    target = (key_slot(site_id.encode()) + place) % CLUSTER_SLOTS
    for salt in itertools.count():
        name = f"{site_id}{UNIT_MARK}{shard}.{salt}"
        if (key_slot(name.encode()) - target) % CLUSTER_SLOTS < _PLACE_WINDOW:
            return name
    raise AssertionError("unreachable")


def unit_of(site_id: str, page_id: str, shards: int) -> str:
    """The unit whose keys count an event of ``page_id`` (the site id when unsharded)."""
    return unit_name(site_id, shard_of(page_id, shards))


def units_of(site_id: str, shards: int) -> list[str]:
    """Every unit of a site split over ``shards`` (shard counts only grow, so these hold
    everything it ever counted)."""
    return [unit_name(site_id, k) for k in range(max(shards, 1))]


def site_of_unit(unit: str) -> str:
    return unit.partition(UNIT_MARK)[0]


def sites_key() -> str:
    """A set of every site id seen; not part of any site's atomic step (SADD is idempotent)."""
    return f"{PREFIX}:sites"


def intact_key(layout: int = LAYOUT_VERSION) -> str:
    """Present while Redis holds every aggregate in this layout: set when a rebuild
    completes. Redis restarted empty or flushed loses it, which is how its loss is
    detected; an upgrade to a new layout looks for a key that is not there yet."""
    return f"{_META}:intact" if layout == 1 else f"{_META}:intact:v{layout}"


def build_marker_key(generation: str) -> str:
    """Exists while a rebuild fills ``generation``: gone means Redis lost it midway."""
    return f"{_META}:building:{generation}"


def salt_key(day: int) -> str:
    """The gateways' shared random salt for cookieless visitor ids of one UTC day (days since
    the epoch); it expires 48 h after its day starts (``ingest_gateway.visitor``)."""
    return f"{_META}:salt:d{day}"


def rebuild_lock_key() -> str:
    """Held (with an expiry the holder keeps renewing) by the one process rebuilding."""
    return f"{_META}:rebuild"


@dataclass(frozen=True, slots=True)
class SiteKeys:
    site_id: str
    generation: str = DEFAULT_GENERATION

    @property
    def _base(self) -> str:
        return f"{PREFIX}:{{{self.site_id}}}:g{self.generation}"

    def generation_match(self) -> str:
        """SCAN pattern for every key of this generation (site ids hold no glob characters)."""
        return f"{self._base}:*"

    def named(self, name: str) -> str:
        """The key of an aggregate in this generation, by its name (see ``suffix_of``)."""
        return f"{self._base}:{name}"

    def suffix_of(self, key: str) -> str:
        """A key of this generation without its generation prefix: the same aggregate's
        name in any generation (``views:h490000``)."""
        return key.removeprefix(f"{self._base}:")

    def key(self, aggregate: Aggregate, scope: Scope, page: str | None = None) -> str:
        """Where ``aggregate`` for ``scope`` (and ``page``) lives in this generation."""
        return self.named(suffix(aggregate, scope, page))

    def facts_of(self, scope: Scope, page: str) -> str:
        """The page facts hash that holds ``page`` in ``scope`` (``contracts.page_facts``)."""
        return self.key(PAGE_FACTS, scope, str(group_of(page, scope.unit)))

    def facts_hashes(self, scope: Scope) -> list[str]:
        """Every page facts hash of ``scope``."""
        return [self.key(PAGE_FACTS, scope, str(g)) for g in range(GROUPS[scope.unit])]

    def generation_pointer(self) -> str:
        """Which generation of this site's aggregates is current (a string)."""
        return f"{PREFIX}:{{{self.site_id}}}:current"

    def applied_offsets(self) -> str:
        """Hash partition -> last Kafka offset applied to this site's aggregates."""
        return f"{self._base}:offsets"
