"""In-memory stand-ins with the exact semantics of the real stores, for pipeline unit tests.

``FakeEventStore`` behaves like ``insert_many(ordered=False)`` with ``_id`` = event id;
``FakeAggregateStore`` interprets the same operations the Lua script applies, with exact
sets in place of HyperLogLogs. Both can be told to fail, like a store that went down.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from aggregator.aggregate import RedisOps
from aggregator.mongo_sink import Located
from aggregator.redis_sink import GenerationMoved
from contracts.keys import DEFAULT_GENERATION, SiteKeys


class FakeEventStore:
    def __init__(self) -> None:
        self.docs: dict[str, tuple[int, int]] = {}
        self.failures = 0

    async def write(self, batch: Sequence[Located]) -> list[Located]:
        if self.failures:
            self.failures -= 1
            from pymongo.errors import AutoReconnect
            raise AutoReconnect("fake outage")
        counting = []
        for r in batch:
            stored = self.docs.setdefault(r.event.event_id, (r.partition, r.offset))
            if stored == (r.partition, r.offset):
                counting.append(r)
        return counting


class FakeAggregateStore:
    def __init__(self) -> None:
        self.offsets: dict[str, dict[int, int]] = defaultdict(dict)
        self.counters: Counter[str] = Counter()
        self.sorted_sets: dict[str, Counter[str]] = defaultdict(Counter)
        self.hashes: dict[str, Counter[str]] = defaultdict(Counter)
        self.sets: dict[str, set[str]] = defaultdict(set)
        self.failures = 0
        self.pointers: dict[str, str] = {}  # site -> current generation, when not the default

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("fake outage")

    async def current(self, site_ids: Iterable[str]) -> dict[str, SiteKeys]:
        self._maybe_fail()
        return {s: SiteKeys(s, self.pointers.get(s, DEFAULT_GENERATION)) for s in site_ids}

    async def applied_offsets(self, sites: Iterable[SiteKeys]) -> dict[tuple[str, int], int]:
        self._maybe_fail()
        return {(s.site_id, p): o for s in sites
                for p, o in self.offsets[s.applied_offsets()].items()}

    async def apply(self, ops: RedisOps, partition: int, first: int, last: int,
                    live: bool = True) -> int | None:
        self._maybe_fail()
        site_id = ops.keys[1].split("{")[1].split("}")[0]
        if live and self.pointers.get(site_id, DEFAULT_GENERATION) != ops.generation:
            raise GenerationMoved(ops.generation)
        marker = self.offsets[ops.keys[0]]
        if marker.get(partition, -1) >= first:
            return marker[partition]
        for op in ops.ops:
            kind, key = op[0], ops.keys[int(op[1]) - 1]  # type: ignore[call-overload]
            if kind == "i":
                self.counters[key] += int(op[2])  # type: ignore[call-overload]
            elif kind == "z":
                self.sorted_sets[key][str(op[2])] += int(op[3])  # type: ignore[call-overload]
            elif kind == "h":
                self.hashes[key][str(op[2])] += int(op[3])  # type: ignore[call-overload]
            elif kind == "p":
                self.sets[key].update(str(m) for m in op[3:])
        marker[partition] = last
        return None

    async def remember_sites(self, site_ids: Iterable[str]) -> None:
        self._maybe_fail()
