"""``infra/stack.py`` without servers: leftover processes are stopped, external servers used."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests import stack as test_stack
from tests.containers import docker_engine_answers
from tests.stack import load_native_stack


def load_stack_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      env: dict[str, str]) -> ModuleType:
    # Its own state folder: a part's before_start writes configs and data folders there,
    # never in the user's .run/.
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = load_native_stack()
    monkeypatch.setattr(module, "PIDS", tmp_path)
    return module


def test_external_servers_replace_the_native_ones(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {
        "EXTERNAL_KAFKA_BOOTSTRAP": "10.0.0.5:9092",
        "EXTERNAL_REDIS_URL": "redis://10.0.0.6:6379/0"})
    env = stack.stack_env(stack.Ports())
    assert env["KAFKA_BOOTSTRAP"] == "10.0.0.5:9092"
    assert env["REDIS_URL"] == "redis://10.0.0.6:6379/0"
    assert env["MONGO_URL"] == "mongodb://127.0.0.1:27027/"  # not given: the native one


def test_stop_also_ends_children_that_outlived_their_leader(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As NGINX's workers do when its master is killed: they keep the port, and the next
    ``up`` could not start NGINX again."""
    stack = load_stack_module(monkeypatch, tmp_path, {})
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    (tmp_path / "worker.pid").write_text(f"{leader.pid} {stack.start_time(leader.pid)}\n")
    deadline = time.monotonic() + 10
    while len(stack.session_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the shell forks its child
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    orphans = stack.session_members(leader.pid)
    assert len(orphans) == 1 and stack.running_pid("worker") is None

    assert stack.stop("worker", timeout_s=5)

    assert stack.session_members(leader.pid) == []
    assert stack.start_time(orphans[0]) is None  # gone, or a zombie nobody reaped yet


def test_no_docker_engine_means_the_native_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens on discard
    assert docker_engine_answers() is False


def test_an_engine_that_answers_its_ping_is_found(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

        engine = threading.Thread(target=answer)
        engine.start()
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        assert docker_engine_answers() is True
        engine.join()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'missing.sock'}")
    assert docker_engine_answers() is False


def test_stop_leaves_a_stranger_alone_that_got_a_recorded_pid(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """After a reboot a pid file may name someone else's session leader."""
    stack = load_stack_module(monkeypatch, tmp_path, {})
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (tmp_path / "gateway-1.pid").write_text(f"{stranger.pid} 1\n")  # an older start time
        assert stack.stop("gateway-1", timeout_s=1) is False
        assert stranger.poll() is None
        assert not (tmp_path / "gateway-1.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_port_base_and_stack_dir_give_a_second_stack_its_own_ports_and_state(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HTTP_PORT", raising=False)
    stack = load_stack_module(monkeypatch, tmp_path, {
        "PORT_BASE": "23000", "STACK_DIR": str(tmp_path / "private"),
        "KAFKA_TOPIC": "test-page-views", "AGGREGATOR_GROUP": "test-aggregators"})
    ports = stack.Ports.load()
    every = [ports.http, ports.kafka, ports.kafka_controller, ports.mongo, ports.redis,
             ports.postgres, *(p for node in ports.kafka_nodes()[1:] for p in node),
             ports.redis_2, ports.redis_3, ports.redis_bus, ports.redis_bus_2, ports.redis_bus_3,
             *(ports.gateway_base + i for i in range(stack.GATEWAYS)),
             *(ports.query_base + i for i in range(stack.QUERY_APIS)),
             *(ports.aggregator_base + i for i in range(stack.AGGREGATORS))]
    assert len(set(every)) == len(every)
    assert all(23000 <= port < 23000 + test_stack.SPARE_PORTS[0] for port in every)
    assert tmp_path / "private" == stack.RUN
    env = stack.stack_env(ports)
    assert (env["KAFKA_TOPIC"], env["AGGREGATOR_GROUP"]) == ("test-page-views", "test-aggregators")
    assert env["HTTP_URL"] == "http://127.0.0.1:23000"
    assert env["POSTGRES_URL"] == "postgres://postgres@127.0.0.1:23005/ferretdb"


def test_the_sqlite_backend_starts_no_postgresql(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {"MONGO_BACKEND": "sqlite"})
    assert not stack.uses_postgres()
    assert "POSTGRES_URL" not in stack.stack_env(stack.Ports())
    tools = stack.Tools(kafka_libs=tmp_path, ferretdb=tmp_path / "ferretdb", redis_server="",
                        nginx="", postgres_bin=None)
    argv = stack.ferretdb_part(tools, stack.Ports()).argv
    assert argv[argv.index("-backend") + 1] == "sqlite"


def test_postgresql_is_the_default_backend(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.delenv("MONGO_BACKEND", raising=False)
    monkeypatch.delenv("EXTERNAL_MONGO_URL", raising=False)
    stack = load_stack_module(monkeypatch, tmp_path, {})
    assert stack.uses_postgres()
    tools = stack.Tools(kafka_libs=tmp_path, ferretdb=tmp_path / "ferretdb", redis_server="",
                        nginx="", postgres_bin=tmp_path)
    argv = stack.ferretdb_part(tools, stack.Ports()).argv
    assert argv[argv.index("-postgresql-url") + 1] == stack.postgres_url(stack.Ports())


def test_a_test_session_takes_a_port_block_no_other_session_holds_and_no_process_uses(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocks = [29600, 29700, 29800]
    monkeypatch.setattr(test_stack, "PORT_BLOCKS", blocks)
    monkeypatch.setattr(test_stack, "TEST_STACKS", tmp_path)
    held_base, held_lock = test_stack.reserve_block()  # another session's
    assert held_base == blocks[0]
    with socket.socket() as listener:  # a stranger on a port inside the second block
        listener.bind(("127.0.0.1", blocks[1] + 42))
        listener.listen()
        base, lock = test_stack.reserve_block()
    os.close(lock)
    os.close(held_lock)
    assert base == blocks[2]
    released, lock = test_stack.reserve_block()  # a finished session's block is free again
    os.close(lock)
    assert released == blocks[0]


def test_redis_runs_with_a_memory_bound_and_evicts_nothing(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {"REDIS_MAXMEMORY": "300mb"})
    tools = stack.Tools(kafka_libs=tmp_path, ferretdb=tmp_path / "ferretdb", redis_server="",
                        nginx="", postgres_bin=None)
    (part,) = stack.redis_parts(tools, stack.Ports())
    part.before_start()
    conf = Path(part.argv[-1]).read_text().splitlines()
    assert {"maxmemory 300mb", "maxmemory-policy noeviction",
            "hash-max-listpack-entries 512"} <= set(conf)  # page facts stay compact
    assert not any(line.startswith("cluster") for line in conf)


def test_redis_cluster_3_runs_three_masters_with_their_own_buses_and_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {"REDIS_CLUSTER": "3",
                                                      "REDIS_MAXMEMORY": "300mb"})
    assert stack.redis_masters() == 3
    tools = stack.Tools(kafka_libs=tmp_path, ferretdb=tmp_path / "ferretdb", redis_server="",
                        nginx="", postgres_bin=None)
    ports = stack.Ports.from_base(23000)
    parts = stack.redis_parts(tools, ports, 3)
    assert [p.name for p in parts] == ["redis-1", "redis-2", "redis-3"]
    confs = []
    for part, (port, bus) in zip(parts, ports.redis_nodes(), strict=True):
        part.before_start()
        conf = set(Path(part.argv[-1]).read_text().splitlines())
        assert {f"port {port}", "cluster-enabled yes", f"cluster-port {bus}",
                "maxmemory 300mb", "maxmemory-policy noeviction"} <= conf
        confs.append(conf)
    dirs = {line for conf in confs for line in conf if line.startswith("dir ")}
    assert len(dirs) == 3  # each master its own data, none the one-server stack's
    env = stack.stack_env(ports, 1, 3)
    assert env["REDIS_URL"] == "redis+cluster://127.0.0.1:23004,127.0.0.1:23035,127.0.0.1:23036"
    assert env["REDIS_CLUSTER"] == "3"
    assert "REDIS_CLUSTER" not in stack.stack_env(ports)  # a one-server stack.env as ever


def test_redis_never_switches_layout_over_the_other_layouts_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Back on one server over its old data, Redis would serve aggregates marked intact
    that lack everything the cluster counted meanwhile: refused, as for Kafka."""
    stack = load_stack_module(monkeypatch, tmp_path, {})
    tools = stack.Tools(kafka_libs=tmp_path, ferretdb=tmp_path / "ferretdb", redis_server="",
                        nginx="", postgres_bin=None)
    ports = stack.Ports.from_base(23000)
    (stack.DATA / "redis").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"REDIS_CLUSTER=3, but .* has redis from another"):
        stack.redis_parts(tools, ports, 3)
    stack.redis_parts(tools, ports, 1)  # its own layout is fine
    (stack.DATA / "redis-2").mkdir()
    with pytest.raises(SystemExit, match="has redis-2 from another count"):
        stack.redis_parts(tools, ports, 1)


def test_redis_cluster_takes_one_or_three_masters(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {"REDIS_CLUSTER": "2"})
    with pytest.raises(SystemExit, match=r"1 \(one server\) or 3"):
        stack.redis_masters()


def test_cluster_info_is_read_whole_however_the_reply_is_split(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stack = load_stack_module(monkeypatch, tmp_path, {})
    fields = b"cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:3\r\n"
    reply = b"$%d\r\n%s\r\n" % (len(fields), fields)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                # in pieces: mid-header, at a line end of the fields, mid-field, the rest;
                # a pause after each so the reader sees them one recv at a time
                for start, end in ((0, 3), (3, 23), (23, 45), (45, len(reply))):
                    conn.sendall(reply[start:end])
                    time.sleep(0.05)

        thread = threading.Thread(target=answer)
        thread.start()
        state = stack.redis_cluster_state(server.getsockname()[1])
        thread.join()
    assert state == {"cluster_state": "ok", "cluster_slots_assigned": "16384",
                     "cluster_known_nodes": "3"}
