"""Raw events in MongoDB are kept ``MONGO_RAW_RETENTION_DAYS`` (by event time), then deleted.

Why: raw events hold visitor ids (pseudonymised or not) and would otherwise be kept for ever.
On real MongoDB a TTL index on ``ts`` does it (the server deletes expired documents about once
a minute). FerretDB 1.24 refuses TTL indexes (``expireAfterSeconds``: NotImplemented), so
there each aggregator sweeps instead: every ``SWEEP_INTERVAL_S`` (an hour) it finds up to
``BATCH`` expired ids and deletes them one by one by ``_id`` (an indexed lookup there; FerretDB
evaluates a range or ``$in`` filter by scanning, so the find is one scan per piece), until
none is left. Two aggregators sweeping at once only repeat deletes, which are idempotent.

What it costs: a rebuild from MongoDB (``--source mongo``, or after a Redis loss) can only
recover what is kept, and the MongoDB fallback answers nothing older.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from bson import DatetimeMS
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure

log = logging.getLogger(__name__)
TTL_INDEX = "ts_ttl"
NOT_IMPLEMENTED = 238
INDEX_OPTIONS_CONFLICT = (85, 86)
BATCH = 1000
DELETE_CONCURRENCY = 16
SWEEP_INTERVAL_S = 3600.0  # retention is in days; each sweep scans the collection on FerretDB
DAY_MS = 86_400_000


class RawRetention:
    """Called by the aggregator at start (``ensure``) and then in the background (``run``)."""

    def __init__(self, events: AsyncCollection[dict[str, Any]], days: int,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 batch: int = BATCH) -> None:
        self._events = events
        self._days = days
        self._clock_ms = clock_ms
        self._batch = batch
        self.server_expires = False  # what ``ensure`` found

    async def ensure(self) -> bool:
        """Create the TTL index; True when the server expires documents itself, False when
        it cannot (FerretDB) and ``sweep`` must."""
        seconds = self._days * 86_400
        self.server_expires = False
        try:
            await self._events.create_index([("ts", 1)], name=TTL_INDEX,
                                            expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code == NOT_IMPLEMENTED:
                return False
            if exc.code not in INDEX_OPTIONS_CONFLICT:
                raise
            # Another retention than last time: replace the index.
            await self._events.drop_index(TTL_INDEX)
            await self._events.create_index([("ts", 1)], name=TTL_INDEX,
                                            expireAfterSeconds=seconds)
        self.server_expires = True
        return True

    async def sweep(self) -> int:
        """Delete every raw event whose ``ts`` is older than the retention; how many."""
        cutoff = DatetimeMS(self._clock_ms() - self._days * DAY_MS)
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def delete(document_id: object) -> None:
            async with limit:
                await self._events.delete_one({"_id": document_id})

        deleted = 0
        while True:
            cursor = self._events.find({"ts": {"$lt": cutoff}}, {"_id": 1}).limit(self._batch)
            ids = [doc["_id"] async for doc in cursor]
            await asyncio.gather(*(delete(i) for i in ids))
            deleted += len(ids)
            if len(ids) < self._batch:
                return deleted

    async def run(self, stopping: asyncio.Event, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweep every ``interval_s`` until stopping, the first one an interval after start
        (a restarting aggregator adds no scan to its catching up); a failed sweep (MongoDB
        down) is logged and tried again at the next interval."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
            if stopping.is_set():
                return
            try:
                deleted = await self.sweep()
            except Exception:  # an outage must not stop the aggregator; the next pass retries
                log.exception("raw_retention_sweep_failed")
            else:
                if deleted:
                    log.info("raw_events_expired", extra={"fields": {
                        "deleted": deleted, "retention_days": self._days}})
