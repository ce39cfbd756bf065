"""Writing raw events to MongoDB once, and telling redos from client retries.

``insert_many(ordered=False)`` with the event id as ``_id``: duplicates fail per document
with code 11000 and the rest is written. A duplicate whose stored (partition, offset) is
the record's own is our own earlier write (a redo after a crash): it still counts. One from
another offset is a client retry of an event already stored: it does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from contracts.event import PageView
from contracts.mongo import EVENT_INDEXES, EVENTS, event_document

DUPLICATE_KEY = 11000
LOOKUP_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class Located:
    """An event with the Kafka position it was read from."""

    event: PageView
    partition: int
    offset: int


class MongoSink:
    """Called by the pipeline; may block on the network and raises pymongo errors on
    outages (the pipeline backs off and retries)."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self._events: AsyncCollection[dict[str, Any]] = client[database][EVENTS]

    async def ensure_indexes(self) -> None:
        for name, keys in EVENT_INDEXES:
            await self._events.create_index(keys, name=name)

    async def write(self, batch: Sequence[Located]) -> list[Located]:
        """Store the batch; return the records that count (new, or redone after a crash)."""
        # An event id twice in one batch: the first in Kafka order is the event, the
        # others are client retries of it (unordered inserts may run in any order).
        firsts: dict[str, Located] = {}
        for r in sorted(batch, key=lambda r: (r.partition, r.offset)):
            firsts.setdefault(r.event.event_id, r)
        unique = list(firsts.values())
        if not unique:
            return []
        docs = [event_document(r.event, r.partition, r.offset) for r in unique]
        try:
            await self._events.insert_many(docs, ordered=False)
            return unique
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            duplicate_at = {int(err["index"]) for err in errors}
        stored = await self._positions({unique[i].event.event_id for i in duplicate_at})
        return [r for i, r in enumerate(unique)
                if i not in duplicate_at
                or stored.get(r.event.event_id) == (r.partition, r.offset)]

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
