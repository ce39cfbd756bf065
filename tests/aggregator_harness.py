"""Running real aggregator processes on a topic of the test's own, so a test can kill,
restart, add and remove them without touching the stack's aggregators."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from contracts.event import PageView, UndecodableRecord, decode_event, encode_event
from tests.kafka_tools import partitions_of, read_between
from tests.stack import HARNESS_SPARES, ROOT, Stack, eventually

_spare_ports = itertools.count()


def spare_port(stack: Stack) -> int:
    """The next of the private stack's spare ports, in turn (few harness processes live at
    once)."""
    return stack.spare_port(HARNESS_SPARES[next(_spare_ports) % len(HARNESS_SPARES)])


@dataclass
class TestTopic:
    name: str
    dead_letters: str
    group: str
    partitions: int


async def create_topic(stack: Stack, partitions: int = 4) -> TestTopic:
    suffix = uuid.uuid4().hex[:10]
    topic = TestTopic(f"test-views-{suffix}", f"test-dlq-{suffix}", f"test-group-{suffix}",
                      partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic.name, partitions, 1),
                                   NewTopic(topic.dead_letters, 1, 1)])
    finally:
        await admin.close()
    return topic


async def produce(stack: Stack, topic: str, values: Sequence[tuple[bytes, bytes]]) -> None:
    """(key, value) records, acknowledged by Kafka before returning."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True,
                                linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_events(stack: Stack, topic: str, events: Sequence[PageView]) -> None:
    await produce(stack, topic, [(e.kafka_key, encode_event(e)) for e in events])


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """A process's /metrics as ``{'name{label="value",...}': value}`` (labels sorted)."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def positions_in_topic(stack: Stack, topic: str) -> dict[str, tuple[int, int]]:
    """Event id -> (partition, offset) of its first record in the topic, for topics where
    tests produce each event once."""
    start = dict.fromkeys(await partitions_of(stack.kafka_bootstrap, topic), 0)
    positions: dict[str, tuple[int, int]] = {}
    for record in await read_between(stack.kafka_bootstrap, start, timeout_s=120):
        try:
            event_id = decode_event(record.value).event_id
        except UndecodableRecord:
            continue
        positions.setdefault(event_id, (record.tp.partition, record.offset))
    return positions


@dataclass
class Aggregator:
    """One ``python -m aggregator`` process with its own metrics port."""

    stack: Stack
    topic: TestTopic
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0  # 0: the next spare port of the stack's block
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or spare_port(self.stack)

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, **self.stack.env(), "KAFKA_TOPIC": self.topic.name,
               "KAFKA_DEAD_LETTER_TOPIC": self.topic.dead_letters,
               "AGGREGATOR_GROUP": self.topic.group, "PORT": str(self.port),
               "INSTANCE": f"test-aggregator-{self.port}", "AGGREGATOR_BACKOFF_MAX_S": "0.5",
               "AGGREGATOR_AUTO_REBUILD": "false",  # Redis reflects the stack's topic, not ours
               **self.extra_env}
        log = (self.log_dir / f"aggregator-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "aggregator"], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_consuming(self, http: aiohttp.ClientSession) -> None:
        async def consuming() -> bool:
            try:
                async with http.get(f"{self.url}/readyz") as response:
                    return bool((await response.json())["checks"]["consumer"])
            except (aiohttp.ClientError, ValueError):
                return False
        await eventually(consuming, timeout_s=60, message=f"aggregator {self.port} consuming")

    async def readiness(self, http: aiohttp.ClientSession) -> dict[str, bool]:
        try:
            async with http.get(f"{self.url}/readyz") as response:
                checks: dict[str, bool] = (await response.json())["checks"]
                return checks
        except (aiohttp.ClientError, ValueError):
            return {}

    async def ready_status(self, http: aiohttp.ClientSession) -> int:
        """/readyz's status (0 while the process does not answer)."""
        try:
            async with http.get(f"{self.url}/readyz") as response:
                return response.status
        except aiohttp.ClientError:
            return 0

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        return await scrape(http, self.url)

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of every start of this aggregator with this event name."""
        lines = (self.log_dir / f"aggregator-{self.port}.log").read_text().splitlines()
        found = []
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # e.g. a traceback's lines
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def terminate(self) -> int:
        """SIGTERM and the exit code (0 means it finished, committed and left the group)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 60)

    def log_tail(self) -> str:
        return (self.log_dir / f"aggregator-{self.port}.log").read_text()[-3000:]
