"""Writing raw events to MongoDB once, and telling redos from client retries.

``insert_many(ordered=False)`` with the event id as ``_id``: duplicates fail per document
with code 11000 and the rest is written. A duplicate whose stored (partition, offset) is
the record's own is our own earlier write (a redo after a crash): it still counts. One from
another offset is a client retry of an event already stored: it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from contracts.event import PageView
from contracts.mongo import EVENT_INDEXES, EVENTS, event_document

DUPLICATE_KEY = 11000


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
        if not batch:
            return []
        docs = [event_document(r.event, r.partition, r.offset) for r in batch]
        try:
            await self._events.insert_many(docs, ordered=False)
            return list(batch)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            duplicate_at = {int(err["index"]) for err in errors}
        dup_ids = list({batch[i].event.event_id for i in duplicate_at})
        stored: dict[str, tuple[int, int]] = {}
        async for doc in self._events.find({"_id": {"$in": dup_ids}},
                                           {"partition": 1, "offset": 1}):
            stored[doc["_id"]] = (doc.get("partition", -1), doc.get("offset", -1))
        return [r for i, r in enumerate(batch)
                if i not in duplicate_at
                or stored.get(r.event.event_id) == (r.partition, r.offset)]
