"""Writing raw events to MongoDB once, and telling redos from client retries.

``insert_many(ordered=False)`` with the event id as ``_id``: duplicates fail per document
with code 11000 and the rest is written. A duplicate whose stored (partition, offset) is
the record's own is our own earlier write (a redo after a crash): it still counts. One from
another offset is a client retry of an event already stored: it does not. Documents are
built when records are decoded (``pipeline.decode_all``), where a record that cannot be
built is dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from contracts.event import PageView
from contracts.mongo import EVENT_INDEXES

DUPLICATE_KEY = 11000
LOOKUP_CONCURRENCY = 16


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

    def __init__(self, events: AsyncCollection[dict[str, Any]]) -> None:
        self._events = events

    async def ensure_indexes(self) -> None:
        for name, keys in EVENT_INDEXES:
            await self._events.create_index(keys, name=name)

    async def write(self, batch: Sequence[Located]) -> list[Located]:
        """Store the batch; return the records that count. Per event id exactly one copy
        counts: the one stored now, or the one whose (partition, offset) the stored document
        already names (a redo after a crash). Every other copy is a client retry."""
        copies: dict[str, list[Located]] = defaultdict(list)
        for r in sorted(batch, key=lambda r: (r.partition, r.offset)):
            copies[r.event.event_id].append(r)
        # One insert per id (unordered inserts of the same id twice may land either one).
        firsts = [group[0] for group in copies.values()]
        if not firsts:
            return []
        try:
            await self._events.insert_many([r.document for r in firsts], ordered=False)
            return firsts
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            duplicate_at = {int(err["index"]) for err in errors}
        counting = [r for i, r in enumerate(firsts) if i not in duplicate_at]
        stored = await self._positions({firsts[i].event.event_id for i in duplicate_at})
        for event_id, position in stored.items():
            # The stored copy may be any of the batch's copies, not only the first: an
            # earlier attempt that crashed after writing it must still have it counted.
            counting += [r for r in copies[event_id] if (r.partition, r.offset) == position]
        return counting

    async def _positions(self, event_ids: set[str]) -> dict[str, tuple[int, int]]:
        """The (partition, offset) each stored event was written from. One ``_id`` lookup
        per event, a few at a time: an exact-``_id`` filter is the query both MongoDB and
        FerretDB answer from an index (FerretDB evaluates ``$in`` by scanning)."""
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def lookup(event_id: str) -> tuple[str, tuple[int, int]]:
            async with limit:
                doc = await self._events.find_one({"_id": event_id},
                                                  {"partition": 1, "offset": 1})
            return event_id, (-1, -1) if doc is None else (doc["partition"], doc["offset"])

        return dict(await asyncio.gather(*(lookup(i) for i in event_ids)))
