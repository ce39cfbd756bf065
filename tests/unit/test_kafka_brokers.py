"""``KAFKA_BROKERS``: the local stack runs one Kafka node as it always did, or a cluster of up
to three (parts ``kafka-1`` … ``kafka-3``, a three-voter quorum, three copies of every topic and
two in sync), without servers: what ``infra/stack.py`` would start and write."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from contracts.topics import Replication
from tests import stack as test_stack
from tests.stack import load_native_stack

BASE = 23000
def native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> ModuleType:
    """``infra/stack.py`` with its state in ``tmp_path``, given only ``env``."""
    for name in ("PORT_BASE", "KAFKA_BROKERS", "EXTERNAL_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = load_native_stack()
    for field in module.Ports.__dataclass_fields__:  # MONGO_PORT and the like: none given
        if f"{field.upper()}_PORT" not in env:
            monkeypatch.delenv(f"{field.upper()}_PORT", raising=False)
    return module


def tools(module: ModuleType, tmp_path: Path) -> Any:
    return module.Tools(kafka_libs=tmp_path / "libs", ferretdb=tmp_path / "ferretdb",
                        redis_server="", nginx="", postgres_bin=None)


def rendered(module: ModuleType, part: Any) -> dict[str, str]:
    """The server.properties a part starts with, as key -> value (storage looks formatted,
    so no StorageTool runs)."""
    props = Path(part.argv[-1])
    node_data = module.DATA / part.name
    node_data.mkdir(parents=True, exist_ok=True)
    (node_data / "meta.properties").write_text("cluster.id=abc\n")
    part.before_start()
    lines = [line for line in props.read_text().splitlines() if line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


def test_one_broker_is_the_stack_as_it_was(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path)
    ports = stack.Ports()
    assert stack.kafka_brokers() == 1
    [part] = stack.kafka_parts(tools(stack, tmp_path), ports, 1)
    assert (part.name, part.port, part.after_ready is not None) == ("kafka", 19092, True)
    assert "-Xmx768m" in part.argv
    props = rendered(stack, part)
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["log.dirs"] == str(stack.DATA / "kafka")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "default.replication.factor", "min.insync.replicas",
                "transaction.state.log.min.isr"):
        assert props[key] == "1", key
    assert not any("@" in value for key, value in props.items() if key != "node.id")
    assert stack.kafka_cluster.format_flags(stack.kafka_nodes(ports, 1)) == ["--standalone"]
    env = stack.stack_env(ports, 1)
    assert env["KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert "KAFKA_BROKERS" not in env


def test_three_brokers_are_three_voters_with_their_own_ports_data_and_copies(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path, PORT_BASE=str(BASE), KAFKA_BROKERS="3")
    ports = stack.Ports.load()
    assert stack.kafka_brokers() == 3
    parts = stack.kafka_parts(tools(stack, tmp_path), ports, 3)
    assert [p.name for p in parts] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [p.port for p in parts] == [BASE + 1, BASE + 6, BASE + 8]
    assert [p.after_ready is not None for p in parts] == [False, False, True]  # topics: last
    voters = f"1@127.0.0.1:{BASE + 2},2@127.0.0.1:{BASE + 7},3@127.0.0.1:{BASE + 9}"
    for node_id, (part, controller) in enumerate(zip(parts, (2, 7, 9), strict=True), start=1):
        assert "-Xmx512m" in part.argv
        props = rendered(stack, part)
        assert props["node.id"] == str(node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert "controller.quorum.bootstrap.servers" not in props
        assert props["listeners"] == (f"PLAINTEXT://127.0.0.1:{part.port},"
                                      f"CONTROLLER://127.0.0.1:{BASE + controller}")
        assert props["log.dirs"] == str(stack.DATA / f"kafka-{node_id}")
        for key in ("offsets.topic.replication.factor", "default.replication.factor",
                    "transaction.state.log.replication.factor",
                    "share.coordinator.state.topic.replication.factor"):
            assert props[key] == "3", key
        for key in ("min.insync.replicas", "transaction.state.log.min.isr",
                    "share.coordinator.state.topic.min.isr"):
            assert props[key] == "2", key
    assert stack.kafka_cluster.format_flags(stack.kafka_nodes(ports, 3)) == []
    env = stack.stack_env(ports, 3)
    assert env["KAFKA_BOOTSTRAP"] == (f"127.0.0.1:{BASE + 1},127.0.0.1:{BASE + 6},"
                                      f"127.0.0.1:{BASE + 8}")
    assert env["KAFKA_BROKERS"] == "3"


def test_every_port_of_a_three_broker_stack_stays_below_the_tests_spare_ports(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path, PORT_BASE=str(BASE))
    ports = stack.Ports.load()
    every = [*(p for pair in ports.kafka_nodes() for p in pair), ports.http, ports.mongo,
             ports.redis, ports.postgres,
             *(ports.gateway_base + i for i in range(stack.GATEWAYS)),
             *(ports.query_base + i for i in range(stack.QUERY_APIS)),
             *(ports.aggregator_base + i for i in range(stack.AGGREGATORS))]
    assert len(set(every)) == len(every)
    assert all(BASE <= port < BASE + test_stack.SPARE_PORTS[0] for port in every)


def test_brokers_two_and_three_default_next_to_the_first_and_each_port_is_configurable(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path, KAFKA_3_PORT="29999")
    assert stack.Ports.load().kafka_nodes() == [(19092, 19093), (19094, 19095), (29999, 19097)]


def test_a_two_broker_cluster_keeps_two_copies_and_needs_only_one_in_sync() -> None:
    assert Replication.for_brokers(1) == Replication(replicas=1, min_insync=1)
    assert Replication.for_brokers(2) == Replication(replicas=2, min_insync=1)
    assert Replication.for_brokers(3) == Replication(replicas=3, min_insync=2)
    assert Replication.for_brokers(5) == Replication(replicas=3, min_insync=2)


@pytest.mark.parametrize("value", ["4", "0", "three"])
def test_a_broker_count_the_stack_cannot_run_is_refused_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    stack = native(monkeypatch, tmp_path, KAFKA_BROKERS=value)
    with pytest.raises(SystemExit, match=r"KAFKA_BROKERS=.*1 to 3"):
        stack.kafka_brokers()


def test_a_later_up_without_the_variable_restarts_the_cluster_it_started(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path)
    stack.RUN.mkdir(parents=True)
    stack.write_env(stack.stack_env(stack.Ports(), 3))
    assert stack.kafka_brokers() == 3
    monkeypatch.setenv("KAFKA_BROKERS", "2")  # the variable wins (and the layout is checked)
    assert stack.kafka_brokers() == 2


def test_a_cluster_is_never_started_over_a_single_nodes_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path)
    (stack.DATA / "kafka").mkdir(parents=True)
    with pytest.raises(SystemExit, match="kafka from another count"):
        stack.kafka_parts(tools(stack, tmp_path), stack.Ports(), 3)
    stack.kafka_parts(tools(stack, tmp_path), stack.Ports(), 1)  # its own count is fine


def test_every_node_of_a_cluster_is_formatted_with_one_cluster_id(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = native(monkeypatch, tmp_path)
    nodes = stack.kafka_nodes(stack.Ports(), 3)
    first = stack.cluster_id(nodes)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", first)
    nodes[1].data.mkdir(parents=True)
    (nodes[1].data / "meta.properties").write_text(f"version=1\ncluster.id={first}\nnode.id=2\n")
    assert stack.cluster_id(nodes) == first  # the others join the formatted node's cluster
