"""Reading the page-view topic back in tests: what exactly did the gateway publish?"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.event import PageView, UndecodableRecord, decode_event


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for p in described[0]["partitions"])


async def group_members(bootstrap: str, group: str) -> list[tuple[str, bytes]]:
    """(member id, assignment) of each member of a consumer group, as its coordinator sees
    it: an empty list once every member left."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    _error, _group_id, _state, _protocol_type, _protocol, members, *_ = response.groups[0]
    return sorted((member[0], bytes(member[4])) for member in members)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(
            await partitions_of(bootstrap, topic))
        return offsets
    finally:
        await stop_quietly(consumer)


class Read(NamedTuple):
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes


async def read_between(bootstrap: str, start: dict[TopicPartition, int],
                       timeout_s: float = 30.0) -> list[Read]:
    """Every record from ``start`` up to the end offsets as they are now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        end = await consumer.end_offsets(list(start))
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        out: list[Read] = []
        remaining = {tp for tp in start if end[tp] > start[tp]}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for msg in messages:
                    if msg.offset < end[tp]:
                        out.append(Read(tp, msg.offset, msg.key, msg.value or b""))
                if tp in remaining and await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        assert not remaining, f"could not read to the end of {remaining}"
        return out
    finally:
        await stop_quietly(consumer)


def events_of_site(records: list[Read], site_id: str) -> list[PageView]:
    return [event for _, event in keyed_events_of_site(records, site_id)]


def keyed_events_of_site(records: list[Read], site_id: str
                         ) -> list[tuple[bytes | None, PageView]]:
    """(Kafka key, decoded event) of the records of ``site_id``; others are skipped."""
    events = []
    for record in records:
        try:
            event = decode_event(record.value)
        except UndecodableRecord:
            continue
        if event.site_id == site_id:
            events.append((record.key, event))
    return events


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """aiokafka 0.14's group-less consumer can raise the CancelledError of its own internal
    task from ``stop()`` when that task never ran; that is not our cancellation."""
    await asyncio.sleep(0)
    with contextlib.suppress(asyncio.CancelledError):
        await consumer.stop()
