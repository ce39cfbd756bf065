"""In-memory stand-ins with the exact semantics of the real stores, for pipeline unit tests.

``FakeEventCollection`` behaves like a collection under ``insert_many(ordered=False)`` with
``_id`` = (site, event id) key, so the real ``MongoSink`` runs on it;
``FakeAggregateStore`` interprets the same operations the Lua script applies (by the
catalog's kinds, ``contracts.aggregates``), with exact sets in place of HyperLogLogs,
rankings holding negated views as Redis does, and each page's facts as its views and its
visitor elements (no promotion, no leaderboard bound: those the real script's tests cover).
Both can be told to fail, like a store that went down.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect, BulkWriteError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from aggregator.counting.aggregate import PAGE_QUOTA, QUOTA, RedisOps
from aggregator.counting.mongo_sink import DUPLICATE_KEY, MongoSink
from aggregator.counting.redis_sink import GenerationMoved, PagesDenied
from contracts.aggregates import ALL_TIME, OPCODES, OVERFLOW_PAGE, PAGE_FACTS, Kind, Scope
from contracts.keys import DEFAULT_GENERATION, SiteKeys
from contracts.page_facts import ELEMENT_CHARS


class FakeEventCollection:
    """The parts of a MongoDB collection ``MongoSink`` uses, with the server's semantics:
    ``insert_many(ordered=False)`` writes every document whose ``_id`` is new and reports
    each other one as a code-11000 write error at its index, in one ``BulkWriteError``."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.failures = 0

    def sink(self) -> MongoSink:
        return MongoSink(cast(AsyncCollection[dict[str, Any]], self))

    def positions(self) -> dict[str, tuple[int, int]]:
        return {i: (d["partition"], d["offset"]) for i, d in self.docs.items()}

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> None:
        assert not ordered, "the sink relies on unordered inserts"
        if self.failures:
            self.failures -= 1
            raise AutoReconnect("fake outage")
        errors = []
        for index, doc in enumerate(documents):
            if doc["_id"] in self.docs:
                errors.append({"index": index, "code": DUPLICATE_KEY,
                               "errmsg": f"E11000 duplicate key: {doc['_id']}"})
            else:
                self.docs[doc["_id"]] = dict(doc)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(documents) - len(errors)})

    async def find_one(self, query: dict[str, Any], projection: dict[str, int]
                       ) -> dict[str, Any] | None:
        doc = self.docs.get(query["_id"])
        if doc is None:
            return None
        return {"_id": doc["_id"], **{k: doc[k] for k in projection if k in doc}}

    async def create_index(self, keys: object, name: str) -> str:
        return name


class FakeAggregateStore:
    def __init__(self) -> None:
        self.offsets: dict[str, dict[int, int]] = defaultdict(dict)
        self.counters: Counter[str] = Counter()
        self.sorted_sets: dict[str, Counter[str]] = defaultdict(Counter)
        self.sets: dict[str, set[str]] = defaultdict(set)
        # page facts hash -> page -> (views, visitor elements)
        self.facts: dict[str, dict[str, tuple[int, set[str]]]] = defaultdict(dict)
        self.failures = 0
        self.errors: list[Exception] = []  # raised one per call before anything else
        self.pointers: dict[str, str] = {}  # site -> current generation, when not the default
        self.applies = 0  # apply calls that changed something

    def _maybe_fail(self) -> None:
        if self.errors:  # given errors first, in order
            raise self.errors.pop(0)
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
        stored = await self.apply_ranges(ops, {partition: (first, last)}, live)
        return None if stored is None else stored[partition]

    async def apply_ranges(self, ops: RedisOps, ranges: Mapping[int, tuple[int, int]],
                           live: bool = True) -> dict[int, int] | None:
        """The apply script's semantics, by the catalog's operation per kind."""
        self._maybe_fail()
        site_id = ops.keys[1].split("{")[1].split("}")[0]
        if live and self.pointers.get(site_id, DEFAULT_GENERATION) != ops.generation:
            raise GenerationMoved(ops.generation)
        marker = self.offsets[ops.keys[0]]
        overlap = {p: marker[p] for p, (first, _) in ranges.items()
                   if marker.get(p, -1) >= first}
        if overlap:
            return overlap
        kinds = {code: kind for kind, code in OPCODES.items()}
        if any(op[0] not in kinds and op[0] not in (QUOTA, PAGE_QUOTA) for op in ops.ops):
            raise ResponseError(f"unknown aggregate operation in {ops.ops}")
        denied = self._denied(ops)
        if denied:
            raise PagesDenied(frozenset(denied))
        for op in ops.ops:
            if op[0] in (QUOTA, PAGE_QUOTA):
                continue
            kind, key, args = kinds[str(op[0])], ops.keys[int(str(op[1])) - 1], op[3:]
            if kind is Kind.FACTS:
                self._add_facts(ops, key, op)
            elif kind is Kind.COUNTER:
                self.counters[key] += int(str(args[0]))
            elif kind is Kind.RANKING:
                for member, n in zip(args[::2], args[1::2], strict=True):
                    self.sorted_sets[key][str(member)] += int(str(n))
            else:
                self.sets[key].update(str(m) for m in args)
        for p, (_, last) in ranges.items():
            marker[p] = last
        self.applies += 1
        return None

    def _add_facts(self, ops: RedisOps, key: str, op: list[object]) -> None:
        named = ops.keys[int(str(op[4])) - 1]
        for page, views, elements in zip(op[6::3], op[7::3], op[8::3], strict=True):
            text = str(elements)
            added = {text[i:i + ELEMENT_CHARS] for i in range(0, len(text), ELEMENT_CHARS)}
            old_views, old = self.facts[key].get(str(page), (0, set()))
            if str(page) not in self.facts[key]:
                self.counters[named] += 1
            self.facts[key][str(page)] = (old_views + int(str(views)), old | added)

    def page_views(self, keys: SiteKeys, scope: Scope = ALL_TIME) -> Counter[str]:
        """Each page's views in one scope, from its facts."""
        prefix = keys.key(PAGE_FACTS, scope, "")
        return Counter({page: views for name, facts in self.facts.items()
                        if name.startswith(prefix) for page, (views, _) in facts.items()})

    def _denied(self, ops: RedisOps) -> list[str]:
        """The quota operations: pages (or values) neither named nor within the room left."""
        denied: list[str] = []
        admitted: list[tuple[Counter[str], str]] = []
        for op in ops.ops:
            if op[0] == PAGE_QUOTA:
                denied += self._pages_denied(ops, op)
            if op[0] != QUOTA:
                continue
            ranking = self.sorted_sets[ops.keys[int(str(op[1])) - 1]]
            room = int(str(op[3])) - len(set(ranking) - {OVERFLOW_PAGE})
            tag = "" if op[2] == 0 else str(op[2])  # a dimension's values come back tagged
            for page in map(str, op[4:]):
                if page not in ranking:
                    if room > 0:
                        room -= 1
                        admitted.append((ranking, page))
                    else:
                        denied.append(tag + page)
        if denied:  # a refused step names what it admitted, as the script does
            for ranking, page in admitted:
                ranking[page] += 0
        return denied

    def _pages_denied(self, ops: RedisOps, op: list[object]) -> list[str]:
        """The page quota: pages not named, past the room left. Pages it admits are named at
        once (0 views): the script names them when it refuses the step, and applying the
        step names them anyway."""
        named = ops.keys[int(str(op[1])) - 1]
        room = int(str(op[3])) - self.counters[named] + (
            OVERFLOW_PAGE in self.facts[ops.keys[int(str(op[2])) - 1]])
        denied = []
        for page, index in zip(map(str, op[4::2]), op[5::2], strict=True):
            facts = self.facts[ops.keys[int(str(index)) - 1]]
            if page not in facts:
                if room > 0:
                    room -= 1
                    facts[page] = (0, set())
                    self.counters[named] += 1
                else:
                    denied.append(page)
        return denied

    async def remember_sites(self, site_ids: Iterable[str]) -> None:
        self._maybe_fail()
