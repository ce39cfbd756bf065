"""Which copy of an event id counts, decided by the real MongoSink on the stack's real
MongoDB-wire server (FerretDB here), not the unit tests' fake collection.

README, exactly-once step 2: a duplicate whose stored (partition, offset) is the record's own
is a redo after a crash and counts; one from another position is a client retry and does
not; within one batch, the copy whose position the stored document names is the one that
counts, wherever it sits in the batch.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aggregator.counting.mongo_sink import Located, MongoSink
from contracts.event import PageView
from contracts.mongo import event_document, event_key


def copy_of(event: PageView, partition: int, offset: int) -> Located:
    return Located(event, partition, offset, event_document(event, partition, offset))


def new_event(site_id: str, page: str = "/p") -> PageView:
    now = int(time.time() * 1000)
    return PageView(event_id=str(uuid.uuid4()), site_id=site_id, page_id=page,
                    user_id="u", ts=now, received_at=now)


def positions(counting: list[Located]) -> list[tuple[str, int, int]]:
    return sorted((r.event.event_id, r.partition, r.offset) for r in counting)


async def stored_at(events: AsyncCollection[dict[str, Any]], event: PageView
                    ) -> tuple[int, int]:
    doc = await events.find_one({"_id": event_key(event.site_id, event.event_id)},
                                {"partition": 1, "offset": 1})
    assert doc is not None, event.event_id
    return doc["partition"], doc["offset"]


async def test_the_redo_counts_even_after_a_client_retry_earlier_in_the_batch(
        mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    """Stored from offset 7 by an attempt that crashed before Redis; the redo's batch holds
    a client retry of the same id at offset 3 first. The copy at 7 counts, not the one at 3."""
    sink = MongoSink(mongo_events)
    x, fresh = new_event(site_id), new_event(site_id)
    assert positions(await sink.write([copy_of(x, 0, 7)])) == [(x.event_id, 0, 7)]

    counting = await sink.write([copy_of(x, 0, 3), copy_of(fresh, 0, 5), copy_of(x, 0, 7)])
    assert positions(counting) == sorted([(x.event_id, 0, 7), (fresh.event_id, 0, 5)])
    assert await stored_at(mongo_events, x) == (0, 7)


async def test_the_redo_counts_and_a_later_client_retry_does_not(
        mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    """The reverse order: stored from offset 3; the batch redoes 3 and holds a client retry
    at 7. The copy at 3 counts, the one at 7 does not."""
    sink = MongoSink(mongo_events)
    x = new_event(site_id)
    assert positions(await sink.write([copy_of(x, 0, 3)])) == [(x.event_id, 0, 3)]

    assert positions(await sink.write([copy_of(x, 0, 7), copy_of(x, 0, 3)])) == [
        (x.event_id, 0, 3)]
    assert await stored_at(mongo_events, x) == (0, 3)


async def test_copies_from_other_positions_alone_never_count(
        mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    """Stored from (partition 1, offset 7): the same offset on another partition, and other
    offsets on its own, are all client retries."""
    sink = MongoSink(mongo_events)
    x = new_event(site_id)
    assert positions(await sink.write([copy_of(x, 1, 7)])) == [(x.event_id, 1, 7)]

    assert positions(await sink.write([copy_of(x, 0, 7), copy_of(x, 1, 3), copy_of(x, 1, 9)])) == []
    assert await stored_at(mongo_events, x) == (1, 7)


async def test_an_id_new_to_the_store_counts_its_first_copy_and_a_redo_agrees(
        mongo_events: AsyncCollection[dict[str, Any]], site_id: str) -> None:
    """Two copies of a new id in one batch: the earlier one is stored and counts; redoing the
    same batch (a crash before the Redis step) counts that same copy again, and only it."""
    sink = MongoSink(mongo_events)
    x, y = new_event(site_id), new_event(site_id, "/q")
    batch = [copy_of(x, 0, 8), copy_of(y, 0, 4), copy_of(x, 0, 2)]
    first = await sink.write(batch)
    assert positions(first) == sorted([(x.event_id, 0, 2), (y.event_id, 0, 4)])
    assert await stored_at(mongo_events, x) == (0, 2)
    assert positions(await sink.write(batch)) == positions(first)
