"""Writing raw events to MongoDB once, and telling redos from client retries.

``insert_many(ordered=False)`` with the event's identity, (site, event id), as ``_id``
(``contracts.mongo.event_key``): duplicates fail per document
with code 11000 and the rest is written. A duplicate whose stored (partition, offset) is
the record's own is our own earlier write (a redo after a crash): it still counts. One from
another offset is a client retry of an event already stored: it does not. Documents are
built when records are decoded (``pipeline.decode_all``), where a record that cannot be
built is dead-lettered.

A batch is inserted in up to ``writers`` chunks at once (``AGGREGATOR_MONGO_WRITERS``): a
server whose inserts scale with concurrent writers (FerretDB on PostgreSQL, MongoDB) takes
them in parallel. Copies of one id never go to two chunks, so which copy is stored stays
decided.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from contracts.event import PageView
from contracts.mongo import EVENT_INDEXES

DUPLICATE_KEY = 11000
LOOKUP_CONCURRENCY = 16
DEADLOCK_RETRIES = 5
MIN_CHUNK = 250  # documents: smaller inserts cost more round trips than they save


@dataclass(frozen=True, slots=True)
class Located:
    """An event with the Kafka position it was read from."""

    event: PageView
    partition: int
    offset: int
    document: dict[str, Any]  # built when decoded: a record that cannot be built is poison


class MongoSink:
    """Called by the pipeline; may block on the network and raises pymongo errors on
    outages (the pipeline backs off and retries)."""

    def __init__(self, events: AsyncCollection[dict[str, Any]], writers: int = 1) -> None:
        self._events = events
        self._writers = max(1, writers)

    async def ensure_indexes(self) -> None:
        """Create the indexes. FerretDB on PostgreSQL can report a deadlock when its own
        index helper works on the same new collection at that moment (SQLSTATE 40P01, seen
        when a stack starts): that attempt changed nothing, so it is tried again."""
        for name, keys in EVENT_INDEXES:
            for attempt in range(DEADLOCK_RETRIES):
                try:
                    await self._events.create_index(keys, name=name)
                    break
                except OperationFailure as exc:
                    if "deadlock detected" not in str(exc) or attempt == DEADLOCK_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))  # back off, then try again

    async def write(self, fresh: Sequence[Located], settled: Sequence[Located] = ()
                    ) -> list[Located]:
        """Store the batch; return the records of ``fresh`` that count. Per event identity
        (site, event id) exactly one copy counts: the one stored now, or the one whose
        (partition, offset) the stored document already names (a redo after a crash). Every
        other copy is a client retry. The same event id under two sites is two events.

        ``settled`` are records at or below an offset Redis already applied: a redo after a
        crash, or records a rebuild or replay read before live counting did (it switched the
        site to a generation whose offsets are ahead). They are stored too, since only live
        counting writes raw events, and take their place as first copies, but never count
        again and need no lookup."""
        copies: dict[str, list[Located]] = defaultdict(list)
        for r in sorted([*fresh, *settled], key=lambda r: (r.partition, r.offset)):
            copies[r.document["_id"]].append(r)
        # One insert per id (unordered inserts of the same id twice may land either one).
        firsts = [group[0] for group in copies.values()]
        if not firsts:
            return []
        duplicate_at = await self._insert([r.document for r in firsts])
        done = {(r.partition, r.offset) for r in settled}
        counting = [r for i, r in enumerate(firsts)
                    if i not in duplicate_at and (r.partition, r.offset) not in done]
        # Which copy is stored matters only where a copy may still count.
        ask = {firsts[i].document["_id"] for i in duplicate_at}
        if done:
            ask = {key for key in ask
                   if any((r.partition, r.offset) not in done for r in copies[key])}
        if not ask:
            return counting
        for key, position in (await self._positions(ask)).items():
            # The stored copy may be any of the batch's copies, not only the first: an
            # earlier attempt that crashed after writing it must still have it counted.
            counting += [r for r in copies[key]
                         if (r.partition, r.offset) == position and position not in done]
        return counting

    async def _insert(self, documents: list[dict[str, Any]]) -> set[int]:
        """Insert every document, in parallel chunks; the indexes of the duplicates. Any
        error other than a duplicate key is raised (after every chunk has finished)."""
        size = max(MIN_CHUNK, -(-len(documents) // self._writers))
        starts = range(0, len(documents), size)
        results = await asyncio.gather(
            *(self._events.insert_many(documents[start:start + size], ordered=False)
              for start in starts), return_exceptions=True)
        duplicate_at: set[int] = set()
        for start, result in zip(starts, results, strict=True):
            if isinstance(result, BulkWriteError):
                errors = result.details.get("writeErrors", [])
                if any(err.get("code") != DUPLICATE_KEY for err in errors):
                    raise result
                duplicate_at.update(start + int(err["index"]) for err in errors)
            elif isinstance(result, BaseException):
                raise result
        return duplicate_at

    async def _positions(self, keys: set[str]) -> dict[str, tuple[int, int]]:
        """The (partition, offset) each stored event (by ``_id``) was written from. One lookup
        per event, a few at a time: an exact-``_id`` filter is the query both MongoDB and
        FerretDB answer from an index (FerretDB evaluates ``$in`` by scanning)."""
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def lookup(key: str) -> tuple[str, tuple[int, int]]:
            async with limit:
                doc = await self._events.find_one({"_id": key}, {"partition": 1, "offset": 1})
            return key, (-1, -1) if doc is None else (doc["partition"], doc["offset"])

        return dict(await asyncio.gather(*(lookup(k) for k in keys)))
