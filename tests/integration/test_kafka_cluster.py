"""``acks=all`` on the three-node cluster ``KAFKA_BROKERS=3`` starts: no acknowledged record is
lost when the node leading the most partitions is SIGKILLed under load, and production goes
on on the new leaders.

The module starts a cluster of its own through ``infra/stack.py``'s own functions (the parts
``up`` would start, the wave that starts them, ``stop``), on a port block of its own
(``reserve_block``: the ports ``Ports.from_base`` gives a private stack, nodes 2 and 3 at
base+6..9) and in a temporary ``STACK_DIR``; the user's stack and the session's private one
are never touched. A topic with three copies and ``min.insync.replicas=2`` gets a steady load
from an idempotent producer (the gateway's settings); a record whose send fails is sent again,
which may store it twice (the first attempt can have been written before the failure): only
such retried records may appear twice, and every acknowledged one must be at the very
partition and offset Kafka acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import signal
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from tests.kafka_tools import read_between
from tests.stack import ROOT, eventually, load_native_stack, reserve_block

pytestmark = pytest.mark.timeout(600)  # 1.5-3.5 minutes measured on a loaded 2-core box
T = TypeVar("T")

TOPIC = "t-cluster-views"
PARTITIONS = 6
RATE = 200  # records offered per second
WARM_UP = 400  # acknowledged before the kill
AFTER_KILL = 600  # acknowledged of those sent after the kill, before the restart
AFTER_RESTART = 400  # acknowledged after the restarted node is back in every ISR
MAX_OFFERED = 30_000  # bounds the test however slow the machine is
PORT_VARIABLES = ("PORT_BASE", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_2_PORT",
                  "KAFKA_CONTROLLER_2_PORT", "KAFKA_3_PORT", "KAFKA_CONTROLLER_3_PORT",
                  "EXTERNAL_KAFKA_BOOTSTRAP")


@dataclass
class Cluster:
    native: ModuleType  # infra/stack.py, loaded with this cluster's STACK_DIR and ports
    parts: list[Any]  # its Part objects, kafka-1 .. kafka-3
    ports: dict[int, int]  # node id -> broker port
    started_s: float

    def bootstrap(self, without: int | None = None) -> str:
        return ",".join(f"127.0.0.1:{port}" for node, port in self.ports.items()
                        if node != without)

    def start(self) -> float:
        """What ``infra/stack.py up`` does for Kafka: start the nodes that are not running
        and wait until each answers. Returns the seconds it took."""
        started = time.monotonic()
        with warnings.catch_warnings():
            # The stack leaves its servers running on purpose: each Popen it drops warns.
            warnings.simplefilter("ignore", ResourceWarning)
            self.native.start_wave(self.parts, {**os.environ})
        return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base, lock = reserve_block(take_kept=False)
    directory = tmp_path_factory.mktemp("kafka-cluster")
    with pytest.MonkeyPatch.context() as env:
        for name in PORT_VARIABLES:
            env.delenv(name, raising=False)
        env.setenv("STACK_DIR", str(directory))
        env.setenv("PORT_BASE", str(base))
        native = load_native_stack()
        ports = native.Ports.load()
    tools = native.Tools(kafka_libs=native.ensure_kafka_jars(), ferretdb=directory,
                         redis_server="", nginx="", postgres_bin=None)
    # Without the page-view topics `up` creates: this test creates its own.
    parts = [dataclasses.replace(part, after_ready=None)
             for part in native.kafka_parts(tools, ports, 3)]
    cluster = Cluster(native, parts, {i: part.port for i, part in enumerate(parts, start=1)}, 0)
    try:
        cluster.started_s = cluster.start()
        yield cluster
    finally:
        try:
            native.stop_together([part.name for part in parts])
        finally:
            os.close(lock)


async def partitions(bootstrap: str, topic: str) -> list[dict[str, Any]] | None:
    """Each partition's leader, replicas and ISR, as a node answers now (None: no answer)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    except KafkaError:
        return None
    finally:
        await admin.close()
    found: list[dict[str, Any]] = described["partitions"]
    return found if len(found) == PARTITIONS else None


async def topic_config(bootstrap: str, topic: str, name: str) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = response.resources[0][4]
    return next((str(entry[1]) for entry in entries if entry[0] == name), None)


class Load:
    """Offers records at a steady rate; each is sent until Kafka acknowledges it (a failed
    send is retried, as a client retries a 503). Records are numbers; keys spread them over
    every partition."""

    def __init__(self, producer: AIOKafkaProducer, rate: float) -> None:
        self.producer, self.rate = producer, rate
        self.acked: dict[int, tuple[int, int]] = {}  # record -> (partition, offset) acked
        self.acked_at: dict[int, float] = {}
        self.sent_at: dict[int, float] = {}
        self.retried: set[int] = set()
        self._deliveries: list[asyncio.Task[None]] = []
        self._stopping = False

    async def run(self) -> None:
        started = time.monotonic()
        for n in range(MAX_OFFERED):
            if self._stopping:
                return
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))  # pacing
            self._deliveries.append(asyncio.create_task(self._deliver(n)))

    async def _deliver(self, n: int) -> None:
        self.sent_at[n] = time.monotonic()
        deadline = self.sent_at[n] + 150
        while True:
            try:
                sent = await self.producer.send(TOPIC, b"%d" % n, key=b"k%d" % (n % 64))
                stored = await sent
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                self.retried.add(n)
                await asyncio.sleep(0.2)
                continue
            self.acked[n], self.acked_at[n] = (stored.partition, stored.offset), time.monotonic()
            return

    def acked_since(self, moment: float) -> int:
        return sum(1 for n in self.acked if self.sent_at[n] > moment)

    def partitions_acked_since(self, moment: float) -> int:
        """How many partitions acknowledged a record sent after ``moment``."""
        return len({self.acked[n][0] for n in self.acked if self.sent_at[n] > moment})

    async def stop(self) -> int:
        """Offer no more and wait (bounded) for the records in flight; returns how many were
        still unacknowledged and given up."""
        self._stopping = True
        if not self._deliveries:
            return 0
        _, pending = await asyncio.wait(self._deliveries, timeout=60)
        for task in pending:
            task.cancel()
        for task in self._deliveries:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        return len(pending)

    def longest_stall(self, partition: int, since: float) -> float:
        """The longest time after ``since`` that ``partition`` acknowledged nothing."""
        times = sorted(t for n, t in self.acked_at.items()
                       if self.acked[n][0] == partition and t > since)
        return max((b - a for a, b in zip([since, *times], times, strict=False)), default=0.0)


async def test_no_acknowledged_record_is_lost_when_the_leading_broker_is_killed(
        cluster: Cluster) -> None:
    created = await topics_script().ensure_topics(cluster.bootstrap(), TOPIC, PARTITIONS,
                                                  brokers=3)
    assert TOPIC in created

    def settled(parts: list[dict[str, Any]] | None) -> bool:
        return bool(parts) and all(p["leader"] >= 0 and len(p["isr"]) == 3 for p in parts or [])

    await eventually(when(lambda: partitions(cluster.bootstrap(), TOPIC), settled),
                     timeout_s=60, interval_s=0.2, message="three copies in sync everywhere")
    assert await topic_config(cluster.bootstrap(), TOPIC, "min.insync.replicas") == "2"

    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap(), enable_idempotence=True,
                                linger_ms=5, request_timeout_ms=5000, metadata_max_age_ms=5000)
    await producer.start()
    load = Load(producer, RATE)
    offering = asyncio.create_task(load.run())
    try:
        await eventually(now(lambda: len(load.acked) >= WARM_UP), timeout_s=60,
                         message=f"{WARM_UP} records acknowledged before the kill")
        leaders = Counter(p["leader"] for p in await partitions(cluster.bootstrap(), TOPIC) or [])
        victim = leaders.most_common(1)[0][0]
        pid = cluster.native.running_pid(f"kafka-{victim}")
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # no controlled shutdown: leaders move only on its loss
        survivors = cluster.bootstrap(without=victim)

        def moved(parts: list[dict[str, Any]] | None) -> bool:
            return bool(parts) and all(p["leader"] not in (-1, victim) for p in parts or [])

        await eventually(when(lambda: partitions(survivors, TOPIC), moved),
                         timeout_s=60, interval_s=0.1, message="every partition led by a survivor")
        moved_at = time.monotonic()
        # Each partition takes writes on its new leader: records sent after the move, acked.
        await eventually(now(lambda: load.partitions_acked_since(moved_at) == PARTITIONS),
                         timeout_s=60, message="every partition acknowledging on its new leader")
        resumed_s = time.monotonic() - killed_at
        await eventually(now(lambda: load.acked_since(killed_at) >= AFTER_KILL),
                         timeout_s=120, message=f"{AFTER_KILL} records sent after the kill acked")
        stalls = {p: round(load.longest_stall(p, killed_at), 1) for p in range(PARTITIONS)}

        restart_s = await asyncio.to_thread(cluster.start)  # `up`: only the killed node starts
        restarted_at = time.monotonic()
        await eventually(when(lambda: partitions(cluster.bootstrap(), TOPIC), settled),
                         timeout_s=90, interval_s=0.2, message="the restarted node in every ISR")
        caught_up_s = time.monotonic() - restarted_at
        await eventually(now(lambda: load.acked_since(restarted_at) >= AFTER_RESTART),
                         timeout_s=60, message="records acknowledged after the restart")
    finally:
        offering.cancel()
        try:
            given_up = await load.stop()
        finally:
            await producer.stop()
    assert given_up == 0, f"{given_up} records never acknowledged"

    start = {TopicPartition(TOPIC, p): 0 for p in range(PARTITIONS)}
    stored = {(r.tp.partition, r.offset): int(r.value) for r in
              await read_between(cluster.bootstrap(), start, timeout_s=60)}
    lost = [n for n, position in load.acked.items() if stored.get(position) != n]
    assert not lost, f"{len(lost)} acknowledged records not at their offsets: {lost[:10]}"
    copies = Counter(stored.values())
    assert set(copies) == set(load.acked)  # every offered record stored, nothing else
    duplicated = {n for n, count in copies.items() if count > 1}
    assert duplicated <= load.retried, sorted(duplicated - load.retried)[:10]
    print(f"\n3-node cluster: started in {cluster.started_s:.1f}s; killed kafka-{victim} "
          f"(led {leaders[victim]} of {PARTITIONS} partitions); leaders moved in "
          f"{moved_at - killed_at:.1f}s, every partition acking again {resumed_s:.1f}s "
          "after the kill; "
          f"longest stall per partition {stalls}; restart {restart_s:.1f}s, back in every ISR "
          f"{caught_up_s:.1f}s later; {len(load.acked)} acknowledged, none lost; "
          f"{len(load.retried)} sends retried, {len(duplicated)} stored twice")


def when(probe: Callable[[], Awaitable[T]], condition: Callable[[T], bool]
         ) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition(await probe())
    return check


def now(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()
    return check


def topics_script() -> ModuleType:
    """``infra/topics.py``, which ``up`` runs to create the topics (here for three brokers)."""
    spec = importlib.util.spec_from_file_location("cluster_topics", ROOT / "infra" / "topics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
