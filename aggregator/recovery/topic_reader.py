"""Reading the whole page-view topic outside the consumer group, for rebuilds.

No group, no commits: a rebuild reads every partition from the beginning (or from the first
record at or after a time) and knows exactly how far it has read on each, because the switch
to the rebuilt generation depends on it.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from aggregator.counting.source import Record


class TopicReader:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
            isolation_level="read_committed", fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024, auto_offset_reset="earliest")
        self._partitions: list[TopicPartition] = []
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.started_at: dict[int, int] = {}

    async def start(self, since_ms: int | None = None,
                    from_offsets: dict[int, int] | None = None) -> None:
        """Read from the beginning, from the first record at or after ``since_ms``, or from
        the given offset of each partition (the beginning for any not given)."""
        await self._consumer.start()
        # The consumer keeps metadata only for subscribed topics; ask the cluster directly.
        cluster = await self._consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self._topic)
        if not found:
            raise LookupError(f"topic {self._topic!r} does not exist")
        self._partitions = [TopicPartition(self._topic, p) for p in sorted(found)]
        self._consumer.assign(self._partitions)
        starts = await self._consumer.beginning_offsets(self._partitions)
        if since_ms is not None:
            ends = await self._consumer.end_offsets(self._partitions)
            found_at = await self._consumer.offsets_for_times(
                dict.fromkeys(self._partitions, since_ms))
            starts = {tp: (at.offset if at is not None else ends[tp])
                      for tp, at in found_at.items()}
        if from_offsets is not None:
            starts = {tp: max(offset, from_offsets.get(tp.partition, offset))
                      for tp, offset in starts.items()}
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)
            self.positions[tp.partition] = offset
        self.started_at = dict(self.positions)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[int, int]:
        ends = await self._consumer.end_offsets(self._partitions)
        return {tp.partition: offset for tp, offset in ends.items()}

    def reached(self, targets: dict[int, int]) -> bool:
        return all(self.positions.get(p, 0) >= offset for p, offset in targets.items())

    async def read(self, max_records: int, targets: dict[int, int]) -> list[Record]:
        """Records up to (not including) each partition's target; partitions that reached
        theirs are paused, so a busy topic cannot keep the read going for ever."""
        done = [tp for tp in self._partitions
                if self.positions.get(tp.partition, 0) >= targets.get(tp.partition, 0)]
        self._consumer.resume(*self._partitions)
        if done:
            self._consumer.pause(*done)
        batches = await self._consumer.getmany(timeout_ms=200, max_records=max_records)
        out: list[Record] = []
        for tp, messages in batches.items():
            for msg in messages:
                if msg.offset >= targets.get(tp.partition, 0):
                    self._consumer.seek(tp, msg.offset)  # past the target: read it next time
                    break
                out.append(Record(tp.partition, msg.offset, msg.key, msg.value))
                self.positions[tp.partition] = msg.offset + 1
        return out
