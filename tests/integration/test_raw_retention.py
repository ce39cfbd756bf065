"""Raw events expire after ``MONGO_RAW_RETENTION_DAYS`` on the real MongoDB-wire server: a
TTL index where the server has them (MongoDB), a bounded sweep where it does not (FerretDB
1.24 refuses ``expireAfterSeconds``). Runs on a scratch database of its own."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from aggregator.raw_retention import RawRetention
from contracts.event import PageView
from contracts.mongo import EVENTS, event_document
from contracts.timebuckets import DAY_MS

pytestmark = pytest.mark.integration
NOW = 1_796_000_000_000



def events(n: int, age_days: float, tag: str) -> list[dict[str, Any]]:
    ts = NOW - int(age_days * DAY_MS)
    return [event_document(PageView(f"{tag}-{i}", "s", "/p", "u", ts, ts), 0, i)
            for i in range(n)]


async def test_raw_events_older_than_the_retention_are_deleted_and_the_rest_kept(
        scratch_db: AsyncDatabase[dict[str, Any]]) -> None:
    collection = scratch_db[EVENTS]
    await collection.insert_many(events(25, 31, "old") + events(3, 30.01, "edge")
                                 + events(10, 29.9, "young"), ordered=False)
    retention = RawRetention(collection, days=30, clock_ms=lambda: NOW, batch=7)

    server_expires = await retention.ensure()
    info = await scratch_db.command("buildInfo")
    if "ferretdbVersion" in info:
        assert not server_expires  # FerretDB 1.24: no TTL index, so the aggregator sweeps
    else:
        assert server_expires
        indexes = await collection.index_information()
        assert indexes["ts_ttl"]["expireAfterSeconds"] == 30 * 86_400

    assert await retention.sweep() == 28  # in pieces of 7: the loop goes on until none left
    left = sorted([doc["_id"].split("\x1f")[1] async for doc in collection.find({})])
    assert left == sorted(f"young-{i}" for i in range(10))
    assert await retention.sweep() == 0
