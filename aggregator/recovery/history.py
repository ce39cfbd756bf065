"""The raw events in MongoDB as the start of a rebuild, for history the topic no longer keeps.

Where MongoDB ends and the topic takes over: the aggregator group's committed offsets. The
group commits only after MongoDB held a batch, so every record below a partition's committed
offset is in MongoDB (its first occurrence, under its own partition and offset; client
retries are not stored). The rebuild takes exactly those documents, then reads the topic from
the committed offsets, where anything already in MongoDB with a lower offset is a retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo.asynchronous.collection import AsyncCollection

from contracts.event import PageView
from contracts.mongo import EVENT_FIELDS, page_view_of

BATCH = 5000
FIELDS = {**EVENT_FIELDS, "partition": 1, "offset": 1}


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> the group's committed offset (partitions it never committed: absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items()
            if tp.topic == topic and meta is not None and meta.offset >= 0}


async def stored_events(events: AsyncCollection[dict[str, Any]], below: dict[int, int],
                        site: str | None) -> AsyncIterator[list[PageView]]:
    """Batches of the stored events whose (partition, offset) lies below ``below``."""
    query: dict[str, Any] = {} if site is None else {"site_id": site}
    batch: list[PageView] = []
    async for doc in events.find(query, FIELDS, batch_size=BATCH):
        if doc.get("offset", -1) >= below.get(doc.get("partition", -1), 0):
            continue  # not committed yet: the topic part of the rebuild counts it
        batch.append(page_view_of(doc))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
