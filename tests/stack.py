"""The private stack that integration and end-to-end tests run on.

The test session starts a whole stack of its own from this checkout (``infra/stack.py up``
with ``STACK_DIR`` and ``PORT_BASE``): its own ports, a block of 100 chosen so that test runs and
the user's stack (``make up``) coexist, its own data, topic and consumer group names. It never
reads the user's ``.run/``, never signals its processes and never writes to its servers. The
session stops its stack at the end, unless ``TEST_STACK_KEEP=1`` (``make test KEEP=1``), which
leaves it running for a faster rerun: the next session takes it over and restarts its services
from the current code. Kafka, MongoDB and Redis run in containers where a Docker engine answers
(``tests/containers.py``). Failure tests use ``stop_part``/``restore``/``signal_part`` to kill
or stop a real part of this stack and bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import orjson
import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from redis import Redis as SyncRedis
from redis.cluster import ClusterNode, RedisCluster

from contracts.keys import intact_key
from contracts.mongo import DATABASE as MONGO_DATABASE
from contracts.redis_client import cluster_startup
from contracts.tenancy import SITES, TOKENS, Site, new_token, site_document, token_document
from tests.containers import docker_engine_answers, start_servers

ROOT = Path(__file__).resolve().parent.parent
TEST_STACKS = ROOT / ".test-stack"  # <port base>/: one private stack's state
PORT_BLOCKS = range(21000, 32000, 100)  # below Linux's ephemeral ports (32768 and up)
BLOCK_SIZE = 100  # infra/stack.py Ports.from_base uses base .. base + 39
SPARE_PORTS = range(40, 100)  # offsets in the block for processes a test starts itself
# Which spare ports (indexes into SPARE_PORTS) each kind of test process takes, so none collide:
HARNESS_SPARES = range(0, 30)  # tests/aggregator_harness.py's aggregators, in turn
CLUSTER_SPARES = range(30, 36)  # the Redis Cluster test's three masters and their buses
OWN_PROCESS_SPARES = range(36, 60)  # a gateway or query API that a test starts itself
KEEP_VARIABLE = "TEST_STACK_KEEP"
# TEST_TOPOLOGY=cluster (make test-cluster): the private stack runs on three Kafka brokers
# and a Redis Cluster of three masters instead of one of each.
TOPOLOGY_VARIABLE = "TEST_TOPOLOGY"
TOPOLOGIES = {"single": {"KAFKA_BROKERS": "1", "REDIS_CLUSTER": "1"},
              "cluster": {"KAFKA_BROKERS": "3", "REDIS_CLUSTER": "3"}}
PRIVATE_NAMES = {"KAFKA_TOPIC": "test-page-views", "AGGREGATOR_GROUP": "test-aggregators",
                 # Off on the shared private stack: tests compare stored user ids and visitor
                 # HyperLogLogs with the ids they sent; tests/e2e/test_privacy.py runs a
                 # gateway of its own with a key.
                 "USER_ID_HASH_KEY": ""}
SERVICE_PREFIXES = ("gateway-", "aggregator-", "query-", "nginx")
T = TypeVar("T")


@dataclass(frozen=True)
class Stack:
    http_url: str
    kafka_bootstrap: str
    topic: str
    dead_letter_topic: str
    group: str  # the stack's aggregators' consumer group
    mongo_url: str
    redis_url: str
    gateway_urls: tuple[str, ...]
    query_urls: tuple[str, ...]
    aggregator_urls: tuple[str, ...]
    directory: Path
    port_base: int
    stats_token: str  # the admin token `infra/stack.py up` created for this stack
    # Kafka nodes (KAFKA_BROKERS): 1 is the part `kafka`; a cluster's are `kafka-1` … `kafka-N`,
    # and kafka_bootstrap lists every one of them.
    kafka_brokers: int = 1
    # Redis masters (REDIS_CLUSTER): 1 is the part `redis`; a cluster's are `redis-1` … `redis-N`.
    redis_masters: int = 1

    @classmethod
    def from_directory(cls, directory: Path, port_base: int) -> Stack:
        env = read_env_file(directory / "stack.env")

        def urls(name: str) -> tuple[str, ...]:
            return tuple(u for u in env.get(name, "").split(",") if u)
        return cls(http_url=env["HTTP_URL"], kafka_bootstrap=env["KAFKA_BOOTSTRAP"],
                   topic=env["KAFKA_TOPIC"], dead_letter_topic=env["KAFKA_DEAD_LETTER_TOPIC"],
                   group=env["AGGREGATOR_GROUP"],
                   mongo_url=env["MONGO_URL"], redis_url=env["REDIS_URL"],
                   gateway_urls=urls("GATEWAY_URLS"), query_urls=urls("QUERY_URLS"),
                   aggregator_urls=urls("AGGREGATOR_URLS"), directory=directory,
                   port_base=port_base, stats_token=env["STATS_TOKEN"],
                   kafka_brokers=int(env.get("KAFKA_BROKERS", "1")),
                   redis_masters=int(env.get("REDIS_CLUSTER", "1")))

    def kafka_parts(self) -> list[str]:
        """The part names of this stack's Kafka nodes (for ``stop_part``/``signal_part``)."""
        return part_names("kafka", self.kafka_brokers)

    def redis_parts(self) -> list[str]:
        """The part names of this stack's Redis servers (each has its data in ``data/<part>``)."""
        return part_names("redis", self.redis_masters)

    def auth(self) -> dict[str, str]:
        """The header that lets a test read every site's stats."""
        return {"Authorization": f"Bearer {self.stats_token}"}

    def env(self) -> dict[str, str]:
        return {"HTTP_URL": self.http_url, "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "KAFKA_TOPIC": self.topic, "KAFKA_DEAD_LETTER_TOPIC": self.dead_letter_topic,
                "AGGREGATOR_GROUP": self.group,
                "MONGO_URL": self.mongo_url, "REDIS_URL": self.redis_url}

    def spare_port(self, index: int) -> int:
        """A port of this stack's reserved block that no part of it uses, for a process the
        test starts itself (another test run never takes a port of this block)."""
        return self.port_base + SPARE_PORTS[index]

    def pid_of(self, name: str) -> int:
        """The live pid of a part, checked against its recorded start time."""
        pid = load_native_stack().running_pid(name)
        assert pid is not None, f"{name} of the private stack is not running"
        return int(pid)

    def signal_part(self, name: str, sig: signal.Signals) -> int:
        """Send ``sig`` to a part of this stack, only after checking the recorded pid is still
        the process that was started (pid plus start time); returns the pid."""
        pid = self.pid_of(name)
        os.kill(pid, sig)
        return pid


def part_names(engine: str, nodes: int) -> list[str]:
    """``infra/stack.py``'s names: ``engine`` alone, or ``engine-1`` ... for a cluster."""
    return [engine] if nodes == 1 else [f"{engine}-{i}" for i in range(1, nodes + 1)]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def register_sites(stack: Stack, site_ids: Sequence[str]) -> None:
    """Register sites in the stack's registry (as ``make sites ARGS="add …"`` does) and wait
    until every gateway of the stack serves them. The gateways re-read the whole registry
    every 2 s, so once each accepts a canary site registered after these, it has these too."""
    canary = f"t-canary-{uuid.uuid4().hex[:12]}"
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
    try:
        sites = client[MONGO_DATABASE][SITES]
        if site_ids:
            sites.insert_many([site_document(Site(s)) for s in site_ids])
        sites.insert_one(site_document(Site(canary)))
    finally:
        client.close()
    body = orjson.dumps({"page_id": "/canary", "user_id": "canary", "site_id": canary})
    for url in stack.gateway_urls:
        track = f"{url}/track"
        poll_until(lambda: post_status(track, body) == 202, timeout_s=30,  # noqa: B023
                   interval_s=0.1, message=f"{url} serving newly registered sites")


def add_token(stack: Stack, sites: Sequence[str]) -> tuple[str, str]:
    """A new stats token for these sites in the stack's registry: (id, token). Query APIs
    accept it within a few seconds (they re-read the tokens every 2 s)."""
    token_id, token = f"t{uuid.uuid4().hex[:10]}", new_token()
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
    try:
        client[MONGO_DATABASE][TOKENS].insert_one(token_document(token_id, token, sites))
    finally:
        client.close()
    return token_id, token


def post_status(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class SitePool:
    """Registered site ids handed out one per test (the ``site_id`` fixture): registering
    in batches keeps the wait for the gateways to notice (about 2 s) to once per batch."""

    def __init__(self, stack: Stack, batch: int = 100) -> None:
        self._stack = stack
        self._batch = batch
        self._free: list[str] = []

    def take(self) -> str:
        if not self._free:
            fresh = [f"t-{uuid.uuid4().hex[:16]}" for _ in range(self._batch)]
            register_sites(self._stack, fresh)
            self._free = fresh
        return self._free.pop()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def load_native_stack() -> ModuleType:
    """``infra/stack.py`` as a module, executed afresh (it reads its settings, ``STACK_DIR``
    among them, at import)."""
    spec = importlib.util.spec_from_file_location("native_stack", ROOT / "infra" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def stack_cli(*args: str) -> None:
    """``infra/stack.py`` on the private stack: the session's environment names it."""
    assert os.environ.get("STACK_DIR"), "the private stack's STACK_DIR is not set"
    subprocess.run([sys.executable, str(ROOT / "infra" / "stack.py"), *args], check=True,
                   cwd=ROOT)


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wanted_topology() -> dict[str, str]:
    """The engines' node counts this session's private stack runs with (TEST_TOPOLOGY)."""
    name = os.environ.get(TOPOLOGY_VARIABLE) or "single"
    if name not in TOPOLOGIES:
        raise RuntimeError(f"{TOPOLOGY_VARIABLE}={name!r}: one of {sorted(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def kept_with_topology(directory: Path, topology: dict[str, str]) -> bool:
    """A kept stack is taken over only by a session that wants the same topology."""
    if not (directory / "kept").exists():
        return False
    env = read_env_file(directory / "stack.env") if (directory / "stack.env").exists() else {}
    return all(env.get(name, "1") == count for name, count in topology.items())


def reserve_block(take_kept: bool = True) -> tuple[int, int]:
    """A port block and the lock that holds it for this session: a stack kept by an earlier
    session first (unless ``take_kept`` is false: a test that starts servers of its own on a
    whole block, such as tests/integration/test_kafka_cluster.py), else the first block that
    no other session holds and whose ports are all free. The lock lives in the system's
    temporary folder, so two checkouts never share one."""
    topology = wanted_topology()
    kept = sorted(int(d.name) for d in TEST_STACKS.glob("[0-9]*")
                  if kept_with_topology(d, topology)) if take_kept else []
    for base in [*kept, *(b for b in PORT_BLOCKS if b not in kept)]:
        lock = os.open(Path(tempfile.gettempdir()) / f"pageviews-test-{base}.lock",
                       os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            continue
        if base in kept or not any(port_taken(p) for p in range(base, base + BLOCK_SIZE)):
            return base, lock
        os.close(lock)
    raise RuntimeError("no free port block for a private test stack")


@contextlib.contextmanager
def private_stack() -> Iterator[Stack]:
    """Start (or take over a kept) private stack; stop it afterwards unless kept."""
    base, lock = reserve_block()
    directory = TEST_STACKS / str(base)
    kept = (directory / "kept").exists()
    if not kept:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.update(STACK_DIR=str(directory), PORT_BASE=str(base), **PRIVATE_NAMES,
                      **wanted_topology())
    remove_containers = None
    if docker_engine_answers():
        addresses, remove_containers = start_servers()
        os.environ.update(addresses)  # every later `infra/stack.py up` (restore) uses them
    try:
        if kept:  # servers and data stay; services restart on this checkout's code
            native = load_native_stack()
            for name in native.names():
                if name.startswith(SERVICE_PREFIXES):
                    native.stop(name)
        stack_cli("up")
        (directory / "kept").unlink(missing_ok=True)
        yield Stack.from_directory(directory, base)
    finally:
        try:
            keep = os.environ.get(KEEP_VARIABLE, "") in ("1", "true", "yes")
            if keep and remove_containers is None:  # containers end with the session
                (directory / "kept").touch()
                print(f"\nprivate test stack kept running in {directory}", file=sys.stderr)
            else:
                stack_cli("down")
                shutil.rmtree(directory / "data", ignore_errors=True)
        finally:
            if remove_containers is not None:
                remove_containers()
            os.close(lock)


def wait_until_aggregates_intact(stack: Stack, timeout_s: float = 300.0) -> None:
    """Redis answers only once the aggregators marked it intact (a first start, or a Redis
    that lost its state, rebuilds from the topic first)."""
    client = sync_redis(stack.redis_url)
    try:
        poll_until(lambda: client.exists(intact_key()), timeout_s=timeout_s, interval_s=0.2,
                   message="Redis aggregates rebuilt and marked intact")
    finally:
        client.close()


def sync_redis(url: str) -> SyncRedis | RedisCluster:
    """A blocking client of the stack's Redis: one server, or a cluster
    (``redis+cluster://``, as the services connect with ``connect_redis_client``)."""
    cluster = cluster_startup(url)
    if cluster is None:
        return SyncRedis.from_url(url)
    nodes, username, password = cluster
    startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=startup, username=username, password=password)


def restore() -> None:
    """Start whatever part of the local stack is not running (after a failure test)."""
    stack_cli("up")


def stop_part(name: str) -> None:
    if os.environ.get(load_native_stack().EXTERNAL_VARIABLES.get(name, "")):
        pytest.skip(f"{name} runs in a container here; this failure test stops the native one")
    stack_cli("stop", name)


def poll_until(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05,
               message: str = "condition") -> T:
    """Call ``check`` until it returns something truthy; fail with the last value after the
    deadline. Tests wait for conditions this way, never with fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout_s}s; last value: {last!r}")
        time.sleep(interval_s)
        last = check()
    return last


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 20.0,
                     interval_s: float = 0.05, message: str = "condition") -> T:
    """Async ``poll_until``: await ``check`` until truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last = await check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout_s}s; last value: {last!r}")
        await asyncio.sleep(interval_s)
        last = await check()
    return last


def admin(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m admin …`` with the private stack's settings, as ``make`` runs it with
    ``.run/stack.env``."""
    return subprocess.run([sys.executable, "-m", "admin", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **stack.env(), **env},
                          timeout=60)


async def drop_database(client: Any, name: str) -> None:
    """Drop a test's scratch database. FerretDB on PostgreSQL can refuse with "tuple
    concurrently updated" while its lookup-index helper is indexing the new tables, or with
    a deadlock on a busy machine: retry."""
    async def dropped() -> bool:
        try:
            await client.drop_database(name)
        except OperationFailure:
            return False
        return True

    await eventually(dropped, timeout_s=30, interval_s=0.2, message=f"{name} dropped")
