"""The apply path and the read path on a real three-master Redis Cluster, unchanged.

README: every Redis key of a site carries the site as a hash tag, so one site's update is a
single-slot atomic step "and runs on Redis Cluster unchanged". The module starts a cluster of
its own (Debian's redis-server in cluster mode, three masters on the private stack's spare
ports), connects with the services' own factory (``REDIS_URL=redis+cluster://...``), counts
two sites whose slots live on different masters through the real pipeline (real MongoSink on
the stack's MongoDB-wire server, real RedisSink), redelivers, and reads them back with the
query API's Redis reader: every number exact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from aggregator.counting.aggregate import aggregate, to_ops
from aggregator.counting.dead_letters import ListDeadLetters
from aggregator.counting.mongo_sink import MongoSink
from aggregator.counting.pipeline import Pipeline
from aggregator.counting.redis_sink import RedisSink
from aggregator.counting.source import InMemorySource, Record
from aggregator.metrics import AggregatorMetrics
from contracts.aggregates import ALL_TIME as ALL_TIME_SCOPE
from contracts.aggregates import VIEWS
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys, intact_key, sites_key
from contracts.markers import Markers
from contracts.redis_client import connect_redis_client
from contracts.settings import Retention
from contracts.timebuckets import HOUR_MS, MINUTE_MS
from query_api.model import Totals
from query_api.ranges import ALL_TIME, TimeRange
from query_api.redis_reader import RedisReader
from tests.aggregator_harness import Aggregator, create_topic, produce_events
from tests.expectations import assert_redis_matches, hll_estimate, recount, total_views
from tests.stack import CLUSTER_SPARES, Stack, eventually, poll_until, port_taken

RETENTION = Retention()
# Spare ports of the stack's block: the aggregator harness takes them in turn from 0, so
# these come from the top. Cluster bus ports are set explicitly (``cluster-port``): the
# default, port + 10000, could fall in another session's block.
CLIENT_PORT_INDEXES = CLUSTER_SPARES[:3]
BUS_PORT_INDEXES = CLUSTER_SPARES[3:]


def cluster_state(port: int) -> str:
    try:
        with SyncRedis(port=port, socket_timeout=2) as client:
            info = client.execute_command("CLUSTER", "INFO")
    except RedisError:
        return ""
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return f"{fields.get('cluster_state')}/{fields.get('cluster_known_nodes')}"


def healthy(port: int) -> bool:
    return cluster_state(port) == "ok/3"


@pytest.fixture(scope="module")
def cluster(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three redis-server masters in one cluster; stopped (and their data removed) after."""
    server = shutil.which("redis-server")
    assert server and shutil.which("redis-cli"), "redis-server and redis-cli are provisioned"
    ports = [stack.spare_port(i) for i in CLIENT_PORT_INDEXES]
    buses = [stack.spare_port(i) for i in BUS_PORT_INDEXES]
    taken = [p for p in ports + buses if port_taken(p)]
    assert not taken, f"spare ports of the private stack in use: {taken}"
    root = tmp_path_factory.mktemp("redis-cluster")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, bus in zip(ports, buses, strict=True):
            data = root / str(port)
            data.mkdir()
            procs.append(subprocess.Popen(
                [server, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"),
                 "--cluster-node-timeout", "5000", "--dir", str(data), "--save", "",
                 "--appendonly", "no", "--logfile", str(data / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for port in ports:
            poll_until(partial(cluster_state, port), timeout_s=30,
                       message=f"redis-server on {port} answers")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=120)
        for port in ports:
            poll_until(partial(healthy, port), timeout_s=60,
                       message=f"node {port} sees a healthy cluster of three")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def cluster_url(ports: list[int]) -> str:
    """What ``REDIS_URL`` names: two of the three nodes (the client discovers the third)."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])


@pytest.fixture
async def cluster_client(cluster: list[int]) -> AsyncIterator[RedisCluster]:
    """The services' own factory, given what ``REDIS_URL`` would name."""
    client = connect_redis_client(cluster_url(cluster), timeout_s=5.0)
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


def sites_on_two_masters(client: RedisCluster) -> list[str]:
    """Two fresh site ids whose slots live on different masters."""
    by_node: dict[str, str] = {}
    while len(by_node) < 2:
        site = f"t-{uuid.uuid4().hex[:16]}"
        node = client.get_node_from_key(SiteKeys(site).key(VIEWS, ALL_TIME_SCOPE))
        assert node is not None
        by_node.setdefault(node.name, site)
    return list(by_node.values())


def make_events(site_id: str, n: int, now: int) -> list[PageView]:
    """Events over the last three hours, several pages and visitors."""
    return [PageView(event_id=str(uuid.uuid4()), site_id=site_id, page_id=f"/p{i % 5}",
                     user_id=f"user-{(i * 7) % 23}", ts=now - (i * 97_000) % (3 * HOUR_MS),
                     received_at=now)
            for i in range(n)]


def records_of(events: Sequence[PageView], partitions: int = 2) -> list[Record]:
    """Spread over partitions, offsets counting up per partition."""
    next_offset = [0] * partitions
    out = []
    for i, e in enumerate(events):
        p = i % partitions
        out.append(Record(p, next_offset[p], e.kafka_key, encode_event(e)))
        next_offset[p] += 1
    return out


async def run_pipeline(records: list[Record], redis: RedisCluster,
                       mongo: AsyncCollection[dict[str, Any]]) -> InMemorySource:
    source = InMemorySource(records)
    pipeline = Pipeline(source=source, mongo=MongoSink(mongo), redis=RedisSink(redis),
                        dead_letters=ListDeadLetters(), metrics=AggregatorMetrics(),
                        stopping=asyncio.Event(), retention=RETENTION)
    while batch := await source.poll(7, 0):
        await pipeline.process(batch)
    return source


async def test_two_sites_on_different_masters_are_counted_exactly_and_read_back(
        cluster_client: RedisCluster, mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    now = int(time.time() * 1000)
    sites = sites_on_two_masters(cluster_client)
    events = {site: make_events(site, 40 + 9 * i, now) for i, site in enumerate(sites)}
    interleaved = [e for pair in zip(*events.values(), strict=False) for e in pair]
    interleaved += events[sites[1]][len(events[sites[0]]):]
    records = records_of(interleaved)

    # Apply path: the real pipeline, then the same records again (a redelivery).
    first = await run_pipeline(records, cluster_client, mongo_events)
    assert first.committed == {0: (len(records) + 1) // 2, 1: len(records) // 2}
    await run_pipeline(records, cluster_client, mongo_events)
    # A redo the pre-check would not filter: the script on each site's master refuses it.
    for site in sites:
        ops = to_ops(SiteKeys(site), aggregate(events[site]), RETENTION)
        assert await RedisSink(cluster_client).apply(ops, 0, 0, 0) is not None
    for site in sites:
        await assert_redis_matches(cluster_client, site, recount(events[site]), RETENTION)
    assert set(sites) <= {s.decode() if isinstance(s, bytes) else s
                          for s in await cluster_client.smembers(sites_key())}

    # Read path: the query API's reader on the same cluster.
    await Markers(cluster_client).set(intact_key(), "1")
    reader = RedisReader(cluster_client)
    assert await reader.ping() and await reader.complete()
    for site in sites:
        await assert_reader_exact(reader, cluster_client, site, events[site], now)


async def assert_reader_exact(reader: RedisReader, client: RedisCluster, site: str,
                              events: list[PageView], now: int) -> None:
    async def uniques(selected: list[PageView]) -> int:
        return await hll_estimate(client, site, {e.user_id for e in selected})

    assert await reader.totals(site, ALL_TIME, None) == Totals(len(events), await uniques(events))
    page = events[0].page_id
    on_page = [e for e in events if e.page_id == page]
    assert await reader.totals(site, ALL_TIME, page) == Totals(len(on_page), await uniques(on_page))

    # Hour slots over the events, and the last few minutes: sums and HLL unions by bucket.
    hour = now // HOUR_MS * HOUR_MS
    slots = [TimeRange(hour + h * HOUR_MS, hour + (h + 1) * HOUR_MS) for h in range(-3, 1)]
    slots.append(TimeRange(now // MINUTE_MS * MINUTE_MS - 4 * MINUTE_MS,
                           now // MINUTE_MS * MINUTE_MS + MINUTE_MS))
    slots.append(TimeRange(hour - 3 * HOUR_MS, hour + HOUR_MS))
    within = {slot: [e for e in events if slot.bounds()[0] <= e.ts < slot.bounds()[1]]
              for slot in slots}
    assert await reader.series(site, slots, "hour", None) == [
        Totals(len(within[s]), await uniques(within[s])) for s in slots]
    assert await reader.series(site, slots, "hour", page) == [
        Totals(len(on), await uniques(on))
        for on in ([e for e in within[s] if e.page_id == page] for s in slots)]

    for rng in (ALL_TIME, slots[-1], slots[-3]):
        selected = events if rng is ALL_TIME else within[rng]
        views: dict[str, int] = {}
        for e in selected:
            views[e.page_id] = views.get(e.page_id, 0) + 1
        ranked = sorted(views.items(), key=lambda kv: (-kv[1], kv[0]))
        assert await reader.ranked_pages(site, rng, 0, 3) == (len(ranked), ranked[:3])
        pages = [p for p, _ in ranked]
        assert await reader.page_uniques(site, rng, pages) == {
            p: await uniques([e for e in selected if e.page_id == p]) for p in pages}


def test_the_cluster_has_three_masters_owning_the_slots(cluster: list[int]) -> None:
    """Guard for the test above: three masters, each owning part of the slots."""
    with SyncRedis(port=cluster[0]) as client:
        shards = client.execute_command("CLUSTER", "SLOTS")
    assert len({tuple(shard[2][:2]) for shard in shards}) == 3


async def test_an_aggregator_process_given_a_cluster_redis_url_counts_exactly(
        stack: Stack, cluster: list[int], cluster_client: RedisCluster,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """``python -m aggregator`` itself, configured only through ``REDIS_URL``: events of two
    sites on different masters, then client retries of some (same event ids)."""
    topic = await create_topic(stack, partitions=3)
    aggregator = Aggregator(stack, topic, tmp_path, extra_env={"REDIS_URL": cluster_url(cluster)})
    aggregator.start()
    try:
        await aggregator.wait_consuming(http)
        now = int(time.time() * 1000)
        sites = sites_on_two_masters(cluster_client)
        events = {site: make_events(site, 30 + 11 * i, now) for i, site in enumerate(sites)}
        sent = [e for site in sites for e in events[site]]
        await produce_events(stack, topic.name, sent)
        await produce_events(stack, topic.name, sent[::4])  # client retries: count once

        for site in sites:
            async def counted(site: str = site) -> bool:
                total = await total_views(cluster_client, site)
                assert total <= len(events[site]), f"counted {total}: double count"
                return total == len(events[site])
            await eventually(counted, timeout_s=120, interval_s=0.2,
                             message=f"{site} counted on the cluster")
        for site in sites:
            await assert_redis_matches(cluster_client, site, recount(events[site]),
                                       Retention.from_env(os.environ))
        assert (await aggregator.readiness(http)).get("redis") is True
    finally:
        if aggregator.running():
            assert await aggregator.terminate() == 0, aggregator.log_tail()


async def test_a_flushed_master_reads_as_a_loss_though_the_marker_lives_on_another(
        cluster_client: RedisCluster) -> None:
    """The layout marker is one key ({!meta}), on one master; a master flushed or restarted
    empty loses its sites' aggregates all the same. Each master keeps a copy of the marker,
    so the loss is seen (by the aggregators' watch and the query API alike) whichever
    master it was. Last in the module: it flushes a master of the shared cluster."""
    markers = Markers(cluster_client)
    copies = await markers.copies(intact_key())
    masters = {node.name for node in cluster_client.get_primaries()}
    assert len(copies) == 1 + len(masters) == 4
    assert {node.name for node in map(cluster_client.get_node_from_key, copies[1:])
            if node is not None} == masters
    await markers.set(intact_key(), "1")
    assert await markers.holds(intact_key()) and await RedisReader(cluster_client).complete()

    meta = cluster_client.get_node_from_key(intact_key())
    assert meta is not None
    other = next(n for n in cluster_client.get_primaries() if n.name != meta.name)
    await cluster_client.flushall(target_nodes=other)
    assert await cluster_client.exists(intact_key())  # alone, the marker would say intact
    assert not await markers.holds(intact_key())
    assert not await RedisReader(cluster_client).complete()

