"""The native local stack: provision, start, check and stop real servers without Docker.

    python infra/stack.py up          provision (cached) and start whatever is not running
    python infra/stack.py down        stop exactly the processes this stack started
    python infra/stack.py status      what runs, with pids
    python infra/stack.py stop NAME   stop one part (e.g. kafka, redis, gateway-1) for failure tests
    python infra/stack.py provision   only install and build (apt, Kafka jars, FerretDB)

Kafka 4.x runs from its Maven Central jars in single-node KRaft mode (``KAFKA_BROKERS=3``:
a cluster of three, parts ``kafka-1`` … ``kafka-3``, see ``infra/kafka/kafka_cluster.py``),
FerretDB 1.24 (the MongoDB wire protocol) is built from the Go module proxy and runs on PostgreSQL
(``MONGO_BACKEND=sqlite``: on SQLite files, and no PostgreSQL is started); PostgreSQL, Redis
and NGINX come from Debian packages. Downloads and builds are cached under
``$PAGEVIEWS_CACHE`` (default ``~/.cache/pageviews``) keyed by the hash of what produced them,
so a warm ``up`` takes seconds.
Servers can come from elsewhere (the test session's containers, say): with
``EXTERNAL_KAFKA_BOOTSTRAP``, ``EXTERNAL_MONGO_URL`` or ``EXTERNAL_REDIS_URL`` set, ``up`` uses
that server instead of starting its own. Everything the stack writes at run time lives in
``.run/`` (or ``$STACK_DIR``): ``stack.env``, ``pids/``, ``logs/`` and ``data/``. ``STACK_DIR``
and ``PORT_BASE`` give a second, independent stack (the test session's private one) its own
state and ports. Only the standard library is used, so this runs before any venv exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
# Stdlib-only helpers of this checkout (no venv needed): the Kafka cluster's shape, and
# contracts.topics for the replication every copy of the topics gets.
sys.path[:0] = [p for p in (str(ROOT), str(INFRA / "kafka")) if p not in sys.path]

import kafka_cluster  # noqa: E402
from kafka_cluster import KafkaNode  # noqa: E402

from contracts.topics import Replication  # noqa: E402

RUN = Path(os.environ.get("STACK_DIR") or ROOT / ".run").resolve()
PIDS, LOGS, DATA = RUN / "pids", RUN / "logs", RUN / "data"
CACHE = Path(os.environ.get("PAGEVIEWS_CACHE", Path.home() / ".cache" / "pageviews"))
APT_PACKAGES = {"redis-server": "redis-server", "nginx": "nginx-light",
                "redis-benchmark": "redis-tools", "wrk": "wrk",
                "chromium": "chromium",  # the browser tests (tests/e2e: dashboard, trackers)
                # the real tracker clients' test (tests/e2e/test_tracker_clients.py)
                "node": "nodejs", "npm": "npm"}
# FerretDB's storage: "postgresql" (default: 2-4x SQLite's insert rate with several writers,
# and indexes its pushed-down filters use) or "sqlite" (no PostgreSQL process).
MONGO_BACKEND = os.environ.get("MONGO_BACKEND", "postgresql")
if MONGO_BACKEND not in ("postgresql", "sqlite"):
    sys.exit(f"MONGO_BACKEND={MONGO_BACKEND!r}: choose postgresql or sqlite")


TOKEN_VARIABLE = "STATS_TOKEN"  # stack.env: the admin stats token `up` created


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Ports:
    """Every port is configurable; defaults avoid the standard Redis and MongoDB ports."""

    http: int = 8080
    kafka: int = 19092
    kafka_controller: int = 19093
    mongo: int = 27027
    redis: int = 16379
    postgres: int = 15432
    gateway_base: int = 8101
    query_base: int = 8201
    aggregator_base: int = 8301
    # Kafka nodes 2 and 3 (KAFKA_BROKERS=2 or 3); node 1 has the ports above.
    kafka_2: int = 19094
    kafka_controller_2: int = 19095
    kafka_3: int = 19096
    kafka_controller_3: int = 19097
    # Redis Cluster (REDIS_CLUSTER=3): masters 2 and 3, and every master's cluster bus, set
    # explicitly (the default, port + 10000, could fall in another stack's block).
    redis_2: int = 16380
    redis_3: int = 16381
    redis_bus: int = 16479
    redis_bus_2: int = 16480
    redis_bus_3: int = 16481

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Every port in ``base .. base + 39``: a block that one ``PORT_BASE`` reserves (the
        test session keeps ``base + 40`` and up for processes its tests start). Aggregators
        take ``base + 30`` on, at most five; Redis Cluster's extra ports are the last five."""
        return cls(http=base, kafka=base + 1, kafka_controller=base + 2, mongo=base + 3,
                   redis=base + 4, postgres=base + 5, gateway_base=base + 10, query_base=base + 20,
                   aggregator_base=base + 30, kafka_2=base + 6, kafka_controller_2=base + 7,
                   kafka_3=base + 8, kafka_controller_3=base + 9, redis_2=base + 35,
                   redis_3=base + 36, redis_bus=base + 37, redis_bus_2=base + 38,
                   redis_bus_3=base + 39)

    def kafka_nodes(self) -> list[tuple[int, int]]:
        """(broker, controller) port of Kafka node 1, 2 and 3."""
        return [(self.kafka, self.kafka_controller), (self.kafka_2, self.kafka_controller_2),
                (self.kafka_3, self.kafka_controller_3)]

    def redis_nodes(self) -> list[tuple[int, int]]:
        """(client, cluster bus) port of Redis master 1, 2 and 3."""
        return [(self.redis, self.redis_bus), (self.redis_2, self.redis_bus_2),
                (self.redis_3, self.redis_bus_3)]

    @classmethod
    def load(cls) -> Ports:
        """Environment first (one variable per port, or ``PORT_BASE`` for a whole block),
        then the ports this stack was started with, then defaults: a second ``up`` without
        the variables keeps the running stack's ports."""
        saved_file = RUN / "ports.json"
        saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
        base = os.environ.get("PORT_BASE")
        defaults = cls.from_base(int(base)) if base else cls()
        values = {}
        for name in cls.__dataclass_fields__:
            variable = f"{name.upper()}_PORT"  # HTTP_PORT, GATEWAY_BASE_PORT, ...
            fallback = getattr(defaults, name) if base else saved.get(name, getattr(cls, name))
            values[name] = int(os.environ.get(variable, fallback))
        ports = cls(**values)
        RUN.mkdir(exist_ok=True)
        saved_file.write_text(json.dumps(values))
        return ports


GATEWAYS = env_int("GATEWAYS", 3)
AGGREGATORS = env_int("AGGREGATORS", 2)
QUERY_APIS = env_int("QUERY_APIS", 2)
PARTITIONS = env_int("KAFKA_PARTITIONS", 6)
# How long and how much (bytes per partition) the topic keeps: replay rebuilds from its
# records (-1: no bound). Applied when the topic is created.
RETENTION_MS = env_int("KAFKA_RETENTION_MS", 30 * 24 * 3600 * 1000)
RETENTION_BYTES = env_int("KAFKA_RETENTION_BYTES", 1024 ** 3)  # per partition
TOPIC = os.environ.get("KAFKA_TOPIC", "page-views")
GROUP = os.environ.get("AGGREGATOR_GROUP", "pageview-aggregators")  # contracts.topics
# Redis's memory bound (policy noeviction: over it, writes are refused with OOM and the
# aggregators hold their batches until memory is raised or freed; nothing is evicted or lost).
REDIS_MAXMEMORY = os.environ.get("REDIS_MAXMEMORY", "1gb")
RATE_LIMIT = env_int("NGINX_RATE_LIMIT", 100)  # ingest requests/s per client (burst 200)
QUERY_RATE_LIMIT = env_int("NGINX_QUERY_RATE_LIMIT", 20)  # query requests/s per client (burst 40)
CONN_LIMIT = env_int("NGINX_CONN_LIMIT", 64)  # open connections per client
# Servers this stack uses but does not run: part name -> address.
EXTERNAL_VARIABLES = {"kafka": "EXTERNAL_KAFKA_BOOTSTRAP", "ferretdb": "EXTERNAL_MONGO_URL",
                      "redis": "EXTERNAL_REDIS_URL"}
EXTERNAL = {part: os.environ[variable] for part, variable in EXTERNAL_VARIABLES.items()
            if os.environ.get(variable)}
BROKERS_VARIABLE = "KAFKA_BROKERS"  # also in stack.env when above 1
REDIS_CLUSTER_VARIABLE = "REDIS_CLUSTER"  # masters of a Redis Cluster; in stack.env when used
REDIS_CLUSTER_SIZES = (1, 3)  # one server, or a cluster of three masters (no replicas)


def kafka_brokers() -> int:
    """How many Kafka nodes this stack runs: ``KAFKA_BROKERS``, else what the stack was
    started with (stack.env; a later ``up`` without the variable restarts the same
    cluster, as ports are kept), else one."""
    value = os.environ.get(BROKERS_VARIABLE) or read_env().get(BROKERS_VARIABLE) or "1"
    try:
        return kafka_cluster.check_count(int(value))
    except ValueError as exc:
        sys.exit(f"{exc}" if value.isdigit() else f"{BROKERS_VARIABLE}={value!r}: a number, 1 to "
                 f"{kafka_cluster.MAX_BROKERS}")


def redis_masters() -> int:
    """How many Redis servers this stack runs: ``REDIS_CLUSTER`` (3: a Redis Cluster of three
    masters), else what the stack was started with (stack.env), else one (no cluster)."""
    value = os.environ.get(REDIS_CLUSTER_VARIABLE) or read_env().get(REDIS_CLUSTER_VARIABLE) \
        or "1"
    if not value.isdigit() or int(value) not in REDIS_CLUSTER_SIZES:
        sys.exit(f"{REDIS_CLUSTER_VARIABLE}={value!r}: 1 (one server) or 3 (a cluster of "
                 "three masters)")
    return int(value)


def say(part: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {part:<12} {message}", flush=True)


def run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- provisioning

@dataclass(frozen=True)
class Tools:
    kafka_libs: Path
    ferretdb: Path
    redis_server: str
    nginx: str
    postgres_bin: Path | None  # the newest /usr/lib/postgresql/<major>/bin


def postgres_bin() -> Path | None:
    """Debian installs each PostgreSQL major beside the others, off ``PATH``: take the newest."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")
             if p.parent.parent.name.isdigit()]
    return max(found, key=lambda b: int(b.parent.name), default=None)


def ensure_apt() -> None:
    missing = [pkg for cmd, pkg in APT_PACKAGES.items() if shutil.which(cmd) is None]
    if MONGO_BACKEND == "postgresql" and "ferretdb" not in EXTERNAL and postgres_bin() is None:
        missing.append("postgresql")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing Debian packages {missing}: run `sudo apt-get install -y "
                 f"{' '.join(missing)}` and try again")
    say("apt", f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
        stdout=subprocess.DEVNULL)


def ensure_kafka_jars() -> Path:
    pom = INFRA / "kafka" / "pom.xml"
    libs = CACHE / f"kafka-{digest(pom)}" / "libs"
    if (libs / ".complete").exists():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            sys.exit(f"`{tool}` is needed to fetch Kafka (Java 17 and Maven)")
    say("kafka", "fetching the broker's jars from Maven Central (first time only)")
    started = time.monotonic()
    # Fetched beside, then renamed into place: two checkouts may provision at once.
    fetching = libs.with_name(f"libs.tmp{os.getpid()}")
    shutil.rmtree(fetching, ignore_errors=True)
    run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={fetching}"])
    (fetching / ".complete").touch()
    if (libs / ".complete").exists():  # another checkout finished first
        shutil.rmtree(fetching)
    else:
        shutil.rmtree(libs, ignore_errors=True)
        fetching.rename(libs)
    say("kafka", f"{len(list(libs.glob('*.jar')))} jars in {time.monotonic() - started:.0f}s")
    return libs


def ensure_ferretdb() -> Path:
    src = INFRA / "ferretdb"
    key = digest(src / "go.mod", src / "go.sum", *sorted(src.glob("*.go")))
    binary = CACHE / f"ferretdb-{key}" / "ferretdb"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        sys.exit("`go` is needed to build FerretDB (Go 1.22 or newer)")
    say("ferretdb", "building FerretDB 1.24 from the Go module proxy (first time only, ~2 min)")
    started = time.monotonic()
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")  # two checkouts may build at once
    run(["go", "build", "-trimpath", "-o", str(tmp), "."], cwd=src,
        env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"})
    tmp.replace(binary)
    say("ferretdb", f"built in {time.monotonic() - started:.0f}s")
    return binary


def provision() -> Tools:
    ensure_apt()
    return Tools(kafka_libs=ensure_kafka_jars(), ferretdb=ensure_ferretdb(),
                 redis_server=shutil.which("redis-server") or "redis-server",
                 nginx=shutil.which("nginx") or "/usr/sbin/nginx", postgres_bin=postgres_bin())


# --------------------------------------------------------------------------- processes

@dataclass
class Part:
    """One process of the stack: how to start it and how to know it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    before_start: Callable[[], None] | None = None
    after_ready: Callable[[], None] | None = None
    timeout_s: float = 90.0
    port: int | None = None  # must be free before start, so we never probe a stranger


def start_time(pid: int) -> str | None:
    """The kernel's start time of a live (not zombie) pid: with the pid it names one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def recorded_pid(name: str) -> tuple[int, str] | None:
    try:
        pid_text, started = (PIDS / f"{name}.pid").read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid_text), started


def running_pid(name: str) -> int | None:
    recorded = recorded_pid(name)
    if recorded is None:
        return None
    pid, started = recorded
    return pid if start_time(pid) == started else None


def session_members(leader: int) -> list[int]:
    """Live processes of the session ``leader`` opened (every part starts one): its children,
    such as NGINX's workers, outlive a killed leader and must be stopped with it."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == leader:  # field 6 of stat: the session id
            members.append(int(stat.parent.name))
    return members


def spawn(part: Part, base_env: dict[str, str]) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    if part.before_start:
        part.before_start()
    log = open(LOGS / f"{part.name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(part.argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
                            env={**base_env, **part.env})
    log.close()
    (PIDS / f"{part.name}.pid").write_text(f"{proc.pid} {start_time(proc.pid)}\n")
    return proc.pid


def wait_ready(part: Part, pid: int) -> None:
    deadline = time.monotonic() + part.timeout_s
    while time.monotonic() < deadline:
        if running_pid(part.name) != pid:
            tail = (LOGS / f"{part.name}.log").read_text(errors="replace")[-3000:]
            sys.exit(f"{part.name} exited during start-up; end of its log:\n{tail}")
        if part.ready():
            return
        time.sleep(0.2)
    sys.exit(f"{part.name} not ready after {part.timeout_s:.0f}s; see {LOGS / part.name}.log")


# Parts stopped by one signal to their leader first. PostgreSQL: SIGINT is its fast shutdown
# (it ends its backends and writes a checkpoint); SIGTERM to every process of its session at
# once would end its helpers under it, which it treats as a crash (recovery at next start).
LEADER_FIRST = {"postgres": signal.SIGINT}


def stop(name: str, timeout_s: float = 20.0) -> bool:
    """SIGTERM the part's whole session (SIGKILL after ``timeout_s``), even when its leader
    died and left children behind; ``LEADER_FIRST`` parts get their own signal first."""
    recorded = recorded_pid(name)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)
    if recorded is None:
        return False
    session, started = recorded
    if start_time(session) not in (None, started):
        return False  # the pid names a stranger now (a reboot): our session is long gone
    # Otherwise the session is ours: Linux reuses no pid while a session still bears it.
    if not session_members(session):
        return False
    if name in LEADER_FIRST and start_time(session) == started:
        os.kill(session, LEADER_FIRST[name])
        deadline = time.monotonic() + timeout_s
        while session_members(session) and time.monotonic() < deadline:
            time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while session_members(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not session_members(session):
            break
    return True


def stop_together(names: list[str], timeout_s: float = 20.0) -> list[str]:
    """Stop several parts at once; returns those that were running. A Kafka cluster's nodes
    go together: stopped one by one, the last would wait for a controller quorum that is
    already gone before its SIGKILL."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        stopped = list(pool.map(lambda name: stop(name, timeout_s), names))
    return [name for name, was_running in zip(names, stopped, strict=True) if was_running]


# --------------------------------------------------------------------------- probes

def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def redis_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def mongo_ok(port: int) -> bool:
    """A real ``ping`` over OP_MSG, so we know FerretDB answers commands, not just listens."""
    body = b"\x00" + _bson({"ping": 1, "$db": "admin"})
    header = struct.pack("<iiii", 16 + 4 + len(body), 1, 0, 2013)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(header + struct.pack("<I", 0) + body)
            reply = s.recv(4096)
            return len(reply) > 21 and b"ok" in reply
    except OSError:
        return False


def _bson(doc: dict[str, object]) -> bytes:
    out = b""
    for key, value in doc.items():
        if isinstance(value, int):
            out += b"\x10" + key.encode() + b"\x00" + struct.pack("<i", value)
        else:
            raw = str(value).encode() + b"\x00"
            out += b"\x02" + key.encode() + b"\x00" + struct.pack("<i", len(raw)) + raw
    return struct.pack("<i", len(out) + 5) + out + b"\x00"


def kafka_ok(port: int) -> bool:
    """ApiVersions and Metadata answered, with at least one broker (infra/kafka/kafka_ready.py):
    a cluster's node answers only once it has caught up with the quorum's metadata."""
    from kafka_ready import probe
    try:
        return bool(probe("127.0.0.1", port, timeout=1.0) >= 1)
    except (OSError, struct.error):
        return False


# --------------------------------------------------------------------------- the parts

def render(template: Path, target: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def kafka_nodes(ports: Ports, brokers: int) -> list[KafkaNode]:
    return kafka_cluster.cluster_nodes(brokers, ports.kafka_nodes(), DATA)


def kafka_parts(tools: Tools, ports: Ports, brokers: int = 1) -> list[Part]:
    """One part per Kafka node, started together in one wave: a cluster's nodes wait for
    each other's votes, so none is ready alone. The last one creates the topics, once every
    node answers (``start_wave`` runs ``after_ready`` in order)."""
    nodes = kafka_nodes(ports, brokers)
    replication = Replication.for_brokers(brokers)
    log4j = f"-Dlog4j2.configurationFile={INFRA / 'kafka' / 'log4j2.properties'}"
    classpath = f"{tools.kafka_libs}/*"
    check_layout("kafka", [node.name for node in nodes], BROKERS_VARIABLE,
                 "its topics' data")

    def props(node: KafkaNode) -> Path:
        return RUN / node.name / "server.properties"

    def format_storage(node: KafkaNode) -> None:
        """Render the node's config; format its storage on its first start, with the
        cluster id of a node formatted before it (one after the other: three JVMs at once
        took 21 s here, in turn 13 s)."""
        values = kafka_cluster.template_values(node, nodes, replication.replicas,
                                               replication.min_insync)
        render(INFRA / "kafka" / "server.properties.in", props(node), values)
        if (node.data / "meta.properties").exists():
            return
        say(node.name, "formatting KRaft storage (first start)")
        run(["java", "-Dkafka.log.level=WARN", log4j, "-cp", classpath,
             "kafka.tools.StorageTool", "format", "-t", cluster_id(nodes), "-c", str(props(node)),
             *kafka_cluster.format_flags(nodes)], stdout=subprocess.DEVNULL)

    return [Part(
        name=node.name,
        argv=["java", *kafka_cluster.heap_flags(nodes), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
              "-Djava.awt.headless=true", log4j, "-cp", classpath, "kafka.Kafka",
              str(props(node))],
        ready=lambda port=node.port: kafka_ok(port),
        before_start=lambda node=node: format_storage(node),
        after_ready=(lambda: create_topics(kafka_cluster.bootstrap(nodes), brokers))
        if node is nodes[-1] else None,
        timeout_s=120 if len(nodes) == 1 else 240, port=node.port) for node in nodes]


def cluster_id(nodes: list[KafkaNode]) -> str:
    """The id every node of one cluster is formatted with: a formatted node's, else new."""
    for node in nodes:
        meta = node.data / "meta.properties"
        if meta.exists():
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
    return kafka_cluster.new_cluster_id()


def check_layout(engine: str, wanted: list[str], variable: str, holds: str) -> None:
    """Refuse to mix an engine's one-node stack and its cluster (parts ``kafka`` or
    ``kafka-1`` ..., ``redis`` or ``redis-1`` ...): a Kafka cluster started over a one-node
    stack's data would show none of its topics; a Redis switched back to the other layout's
    data would serve its stale aggregates, marked intact, without what was counted since."""
    other = sorted(path.name for path in [*DATA.glob(engine), *DATA.glob(f"{engine}-[0-9]*")]
                   if path.name not in wanted)
    other += sorted(name for name in names() if (name == engine or name.startswith(
        f"{engine}-")) and name not in wanted and running_pid(name) is not None)
    if other:
        sys.exit(f"{variable}={len(wanted)}, but this stack ({RUN}) has "
                 f"{', '.join(sorted(set(other)))} from another count: run `make up` with the "
                 f"count it was started with, or `make down` and remove {DATA}/{engine}* "
                 f"({holds}) to change it")


def create_topics(bootstrap: str, brokers: int = 1) -> None:
    """Idempotent: creates the page-view and dead-letter topics when missing, replicated
    over ``brokers`` (``contracts.topics.Replication``)."""
    run([str(ROOT / ".venv" / "bin" / "python"), str(INFRA / "topics.py"),
         bootstrap, TOPIC, str(PARTITIONS), str(RETENTION_MS), str(RETENTION_BYTES),
         str(brokers)])


HASH_LISTPACK_ENTRIES = 512


def redis_conf(port: int, data: Path, bus: int | None = None) -> str:
    """One Redis server's configuration; with ``bus``, a Redis Cluster master."""
    lines = [f"port {port}", "bind 127.0.0.1", "protected-mode yes", "daemonize no",
             f"dir {data}", "appendonly yes", "appendfsync everysec", "save 3600 1",
             f"maxmemory {REDIS_MAXMEMORY}", "maxmemory-policy noeviction", "loglevel notice",
             # A bucket's page facts hash holds a few hundred pages (contracts.page_facts):
             # compact (listpack) up to this many, 10x smaller than a hash table.
             f"hash-max-listpack-entries {HASH_LISTPACK_ENTRIES}"]
    if bus is not None:
        lines += ["cluster-enabled yes", f"cluster-port {bus}",
                  f"cluster-config-file {data / 'nodes.conf'}", "cluster-node-timeout 5000"]
    return "\n".join([*lines, ""])


def redis_parts(tools: Tools, ports: Ports, masters: int = 1) -> list[Part]:
    """``redis``, or the masters ``redis-1`` ... of a Redis Cluster, each with its own data
    directory (so a one-server stack's data is never mixed into a cluster's)."""
    nodes = [(ports.redis, None, "redis")] if masters == 1 else [
        (port, bus, f"redis-{n}") for n, (port, bus) in enumerate(ports.redis_nodes(), 1)]
    check_layout("redis", [name for _, _, name in nodes], REDIS_CLUSTER_VARIABLE,
                 "its aggregates: the aggregators rebuild them from MongoDB and the topic")
    parts = []
    for port, bus, name in nodes:
        conf, data = RUN / name / "redis.conf", DATA / name

        def write_conf(conf: Path = conf, data: Path = data, port: int = port,
                       bus: int | None = bus) -> None:
            data.mkdir(parents=True, exist_ok=True)
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(redis_conf(port, data, bus))

        parts.append(Part(name=name, argv=[tools.redis_server, str(conf)],
                          ready=lambda port=port: redis_ok(port), before_start=write_conf,
                          port=port))
    return parts


def redis_cluster_state(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as fields (empty when it does not answer, or answers
    something other than the bulk string of fields)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            reply = b""
            while b"\r\n" not in reply:  # the header: $<length>
                chunk = s.recv(4096)
                if not chunk:
                    return {}
                reply += chunk
            header, _, body = reply.partition(b"\r\n")
            if not header.startswith(b"$") or not header[1:].isdigit():
                return {}
            length = int(header[1:])
            while len(body) < length:  # the fields, however the reply was split
                chunk = s.recv(4096)
                if not chunk:
                    return {}
                body += chunk
    except OSError:
        return {}
    lines = body[:length].decode(errors="replace").split("\r\n")
    return dict(line.split(":", 1) for line in lines if ":" in line)


def ensure_redis_cluster(ports: Ports, timeout_s: float = 60.0) -> None:
    """Form the cluster the first time its masters run (every node alone, no slot assigned:
    ``redis-cli --cluster create``); later starts re-form it from each node's nodes.conf.
    Returns once every node says the cluster is ok."""
    nodes = [port for port, _ in ports.redis_nodes()]
    states = [redis_cluster_state(port) for port in nodes]
    if all(st.get("cluster_known_nodes") == "1" and st.get("cluster_slots_assigned") == "0"
           for st in states):
        say("redis", "forming the cluster of three masters")
        run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in nodes),
             "--cluster-replicas", "0", "--cluster-yes"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not all(redis_cluster_state(p).get("cluster_state") == "ok" for p in nodes):
        if time.monotonic() > deadline:
            sys.exit(f"the Redis Cluster on ports {nodes} is not ok after {timeout_s:g}s: "
                     f"{[redis_cluster_state(p) for p in nodes]}")
        time.sleep(0.2)


def ferretdb_part(tools: Tools, ports: Ports) -> Part:
    argv = [str(tools.ferretdb), "-listen", f"127.0.0.1:{ports.mongo}", "-log-level", "warn"]
    if MONGO_BACKEND == "sqlite":
        return Part(name="ferretdb", argv=[*argv, "-backend", "sqlite",
                                           "-sqlite-dir", str(DATA / "ferretdb")],
                    ready=lambda: mongo_ok(ports.mongo), port=ports.mongo)
    return Part(name="ferretdb",
                argv=[*argv, "-backend", "postgresql", "-postgresql-url", postgres_url(ports)],
                ready=lambda: mongo_ok(ports.mongo), port=ports.mongo,
                before_start=lambda: ensure_database(tools, ports))


# --------------------------------------------------------------------------- PostgreSQL

PG_USER = "postgres"  # the superuser initdb creates; also the system user when we are root
PG_DATABASE = "ferretdb"  # each MongoDB database is a schema in it
# Durability stays as shipped (fsync, synchronous_commit and full_page_writes on): a write
# FerretDB acknowledged survives a crash. Tuned only what loses nothing: memory for pages and
# WAL, and fewer checkpoints (each one writes whole pages to the WAL again).
PG_SETTINGS = {
    "listen_addresses": "127.0.0.1", "max_connections": "200",
    "shared_buffers": "256MB", "wal_buffers": "16MB", "wal_compression": "on",
    "max_wal_size": "2GB", "min_wal_size": "256MB", "checkpoint_timeout": "15min",
    "log_min_messages": "warning", "log_line_prefix": "%m [%p] ",
}
PG_HBA = "local all all trust\nhost all all 127.0.0.1/32 trust\n"  # loopback only


def postgres_url(ports: Ports) -> str:
    return f"postgres://{PG_USER}@127.0.0.1:{ports.postgres}/{PG_DATABASE}"


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root (CI), run it as the Debian package's
    ``postgres`` user; ``setpriv`` execs, so the session leader is the server itself."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", *argv]


def prepare_postgres_dir(data: Path) -> None:
    """The data directory, owned by whoever runs the server. As root, the ``postgres`` user
    must also reach it through every parent directory: we fail with the fix rather than put
    the data outside ``STACK_DIR``, where ``down`` and the tests' cleanup would not see it."""
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() != 0:
        return
    shutil.chown(data, PG_USER, PG_USER)
    data.chmod(0o700)
    if subprocess.run(as_postgres(["test", "-w", str(data), "-a", "-x", str(data)])).returncode:
        blocked = [str(p) for p in reversed(data.parents) if not os.stat(p).st_mode & 0o001]
        sys.exit(f"postgres: the `{PG_USER}` user cannot reach {data}; make every parent "
                 f"directory searchable (chmod o+x {' '.join(blocked) or '...'}) or set "
                 "STACK_DIR to a directory it can reach")


def postgres_part(tools: Tools, ports: Ports) -> Part:
    if tools.postgres_bin is None:
        sys.exit("postgres: no /usr/lib/postgresql/*/bin/postgres; install Debian's `postgresql`")
    bin_dir, data = tools.postgres_bin, DATA / "postgres"
    socket_dir = str(data) if len(f"{data}/.s.PGSQL.{ports.postgres}") < 100 else ""

    def init() -> None:
        prepare_postgres_dir(data)
        if not (data / "PG_VERSION").exists():
            say("postgres", "initdb (first start)")
            run(as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER,
                             "-E", "UTF8", "--no-locale", "--auth=trust"]),
                stdout=subprocess.DEVNULL)
        (data / "pg_hba.conf").write_text(PG_HBA)
        if os.geteuid() == 0:
            shutil.chown(data / "pg_hba.conf", PG_USER, PG_USER)

    settings = [arg for key, value in PG_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
    return Part(name="postgres",
                argv=as_postgres([str(bin_dir / "postgres"), "-D", str(data),
                                  "-p", str(ports.postgres), "-k", socket_dir, *settings]),
                ready=lambda: postgres_ok(bin_dir, ports.postgres), before_start=init,
                port=ports.postgres)


def postgres_ok(bin_dir: Path, port: int) -> bool:
    return subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                           "-U", PG_USER, "-d", "postgres"]).returncode == 0


def ensure_database(tools: Tools, ports: Ports) -> None:
    """FerretDB's database, created on first start (FerretDB creates schemas, not databases)."""
    assert tools.postgres_bin is not None
    psql = [str(tools.postgres_bin / "psql"), "-h", "127.0.0.1", "-p", str(ports.postgres),
            "-U", PG_USER, "-d", "postgres", "-tAq", "-c"]
    exists = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
                            check=True, capture_output=True, text=True).stdout.strip()
    if exists != "1":
        say("postgres", f"creating database {PG_DATABASE}")
        run([*psql, f"CREATE DATABASE {PG_DATABASE}"], stdout=subprocess.DEVNULL)


def service_parts(ports: Ports, python: str) -> list[Part]:
    parts = []
    for i in range(GATEWAYS):
        port = ports.gateway_base + i
        parts.append(Part(name=f"gateway-{i + 1}", argv=[python, "-m", "ingest_gateway"],
                          env={"PORT": str(port)}, port=port,
                          ready=lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz")))
    for i in range(AGGREGATORS):
        port = ports.aggregator_base + i
        parts.append(Part(name=f"aggregator-{i + 1}", argv=[python, "-m", "aggregator"],
                          env={"PORT": str(port), "INSTANCE": f"aggregator-{i + 1}"},
                          port=port, ready=lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz")))
    for i in range(QUERY_APIS):
        port = ports.query_base + i
        parts.append(Part(name=f"query-{i + 1}", argv=[python, "-m", "query_api"],
                          env={"PORT": str(port)},
                          port=port, ready=lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz")))
    return parts


def nginx_part(tools: Tools, ports: Ports) -> Part:
    conf = RUN / "nginx" / "nginx.conf"

    def write_conf() -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (RUN / "nginx" / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        def servers(base: int, n: int) -> str:
            return "\n".join(f"        server 127.0.0.1:{base + i} max_fails=1 fail_timeout=2s;"
                             for i in range(n))

        render(INFRA / "nginx" / "nginx.conf.in", conf, {
            "RUN": str(RUN), "MIME_TYPES": "/etc/nginx/mime.types",
            "ROUTES": str(INFRA / "nginx" / "routes.conf"), "HTTP_PORT": str(ports.http),
            "RATE_LIMIT": str(RATE_LIMIT), "QUERY_RATE_LIMIT": str(QUERY_RATE_LIMIT),
            "CONN_LIMIT": str(CONN_LIMIT),
            "GATEWAY_SERVERS": servers(ports.gateway_base, GATEWAYS),
            "QUERY_SERVERS": servers(ports.query_base, QUERY_APIS)})
        run([tools.nginx, "-t", "-q", "-p", str(RUN / "nginx"), "-c", str(conf)])

    return Part(name="nginx", argv=[tools.nginx, "-p", str(RUN / "nginx"), "-c", str(conf)],
                ready=lambda: http_ok(f"http://127.0.0.1:{ports.http}/nginx-healthz"),
                before_start=write_conf, port=ports.http)


def redis_url(ports: Ports, masters: int = 1) -> str:
    if masters == 1:
        return f"redis://127.0.0.1:{ports.redis}/0"
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port, _ in
                                         ports.redis_nodes()[:masters])


def stack_env(ports: Ports, brokers: int = 1, masters: int = 1) -> dict[str, str]:
    """What services, tools and tests read (``stack.env``). ``KAFKA_BROKERS`` and
    ``REDIS_CLUSTER`` only when a cluster runs: a one-node stack's file is as it always was."""
    return {
        "HTTP_URL": f"http://127.0.0.1:{ports.http}",
        "KAFKA_BOOTSTRAP": EXTERNAL.get("kafka", kafka_cluster.bootstrap(kafka_nodes(ports,
                                                                                   brokers))),
        **({BROKERS_VARIABLE: str(brokers)} if brokers > 1 and "kafka" not in EXTERNAL else {}),
        "KAFKA_TOPIC": TOPIC,
        "KAFKA_DEAD_LETTER_TOPIC": f"{TOPIC}-dead-letters",
        "AGGREGATOR_GROUP": GROUP,
        "MONGO_URL": EXTERNAL.get("ferretdb", f"mongodb://127.0.0.1:{ports.mongo}/"),
        "REDIS_URL": EXTERNAL.get("redis", redis_url(ports, masters)),
        **({REDIS_CLUSTER_VARIABLE: str(masters)} if masters > 1 and "redis" not in EXTERNAL
           else {}),
        **({"POSTGRES_URL": postgres_url(ports)} if uses_postgres() else {}),
        "GATEWAY_URLS": ",".join(f"http://127.0.0.1:{ports.gateway_base + i}"
                                 for i in range(GATEWAYS)),
        "QUERY_URLS": ",".join(f"http://127.0.0.1:{ports.query_base + i}"
                               for i in range(QUERY_APIS)),
        "AGGREGATOR_URLS": ",".join(f"http://127.0.0.1:{ports.aggregator_base + i}"
                                    for i in range(AGGREGATORS)),
    }


def user_id_hash_key() -> str:
    """The gateways' key for pseudonymising user ids: ``USER_ID_HASH_KEY`` when set (empty:
    off), else a random one generated once into the stack's directory and kept there (a new
    key would make returning visitors new)."""
    if "USER_ID_HASH_KEY" in os.environ:
        return os.environ["USER_ID_HASH_KEY"]
    path = RUN / "user_id_hash_key"
    if not path.exists():
        RUN.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def uses_postgres() -> bool:
    return MONGO_BACKEND == "postgresql" and "ferretdb" not in EXTERNAL


def start_wave(wave: list[Part], base_env: dict[str, str]) -> None:
    """Start the parts of a wave that are not running, then wait until all of them answer."""
    spawned: list[tuple[Part, int, float]] = []
    running: list[tuple[Part, int]] = []
    for part in wave:
        pid = running_pid(part.name)
        if pid is not None:
            running.append((part, pid))
            continue
        if stop(part.name):  # its leader died, but children (NGINX workers) live on
            say(part.name, "stopped what was left of its last run")
        if part.port is not None and port_open(part.port):
            sys.exit(f"{part.name}: port {part.port} is taken by another process; "
                     "choose another port (see README, Ports)")
        say(part.name, "starting")
        spawned.append((part, spawn(part, base_env), time.monotonic()))
    for part, pid in running:  # already running is not enough: it must answer too
        if not part.ready():
            say(part.name, f"running (pid {pid}) but not answering; waiting")
            wait_ready(part, pid)
    for part, pid, t0 in spawned:
        wait_ready(part, pid)
        if part.after_ready:
            part.after_ready()
        say(part.name, f"ready in {time.monotonic() - t0:.1f}s (pid {pid})")


def init_tenancy(python: str, base_env: dict[str, str], known_token: str | None) -> str | None:
    """Register the ``default`` site and make sure an admin stats token exists
    (``python -m admin init``). A token is created only when MongoDB holds no admin token
    yet: then it is printed once and returned (for ``stack.env``); otherwise the token this
    stack recorded before is kept, if any."""
    out = subprocess.run([python, "-m", "admin", "init"], env=base_env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    created = json.loads(out.strip().splitlines()[-1]).get("token")
    if created:
        say("admin", f"created an admin stats token (also in {RUN / 'stack.env'} as "
                     f"{TOKEN_VARIABLE}): {created}")
        return str(created)
    if not known_token:
        say("admin", "an admin token exists but this stack did not record it; create one "
                     "with: make tokens ARGS=\"add --admin\"")
    return known_token


def write_env(values: dict[str, str]) -> None:
    (RUN / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def read_env() -> dict[str, str]:
    path = RUN / "stack.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def up() -> None:
    started = time.monotonic()
    ports = Ports.load()
    brokers = kafka_brokers()
    masters = redis_masters()
    tools = provision()
    env_values = stack_env(ports, brokers, masters)
    RUN.mkdir(exist_ok=True)
    previous = read_env()
    if previous.get(TOKEN_VARIABLE):  # the admin token `up` created once stays recorded
        env_values[TOKEN_VARIABLE] = previous[TOKEN_VARIABLE]
    write_env(env_values)
    base_env = {**os.environ, **env_values, "PYTHONUNBUFFERED": "1",
                "USER_ID_HASH_KEY": user_id_hash_key()}
    python = str(ROOT / ".venv" / "bin" / "python")
    # Servers one by one (each needs the previous; a Kafka cluster's nodes together), then
    # all services at once, then NGINX.
    waves = [[] if "redis" in EXTERNAL else redis_parts(tools, ports, masters),
             *([[postgres_part(tools, ports)]] if uses_postgres() else []),
             [ferretdb_part(tools, ports)],
             [] if "kafka" in EXTERNAL else kafka_parts(tools, ports, brokers)]
    waves = [wave for wave in waves if wave and wave[0].name not in EXTERNAL]
    waves += [service_parts(ports, python), [nginx_part(tools, ports)]]
    if "kafka" in EXTERNAL:
        create_topics(EXTERNAL["kafka"], brokers)
    services = waves[-2:]
    for wave in waves[:-2]:
        start_wave(wave, base_env)
        if wave[0].name == "redis-1":
            ensure_redis_cluster(ports)
    token = init_tenancy(python, base_env, previous.get(TOKEN_VARIABLE))
    if token:
        env_values[TOKEN_VARIABLE] = token
        write_env(env_values)
    for wave in services:
        if any(p.name.startswith("aggregator") for p in wave) and not any(
                running_pid(p.name) for p in wave if p.name.startswith("aggregator")):
            # Raw events stored before the (site, event id) identity are rewritten before
            # any aggregator counts (a no-op once done; see aggregator/recovery/migrate_ids.py).
            run([python, "-m", "aggregator.recovery.migrate_ids"], env=base_env, cwd=ROOT)
        start_wave(wave, base_env)
    say("stack", f"up in {time.monotonic() - started:.1f}s")
    print(f"\n  Track page views:  curl -X POST {env_values['HTTP_URL']}/track "
          "-H 'Content-Type: application/json' -d '{\"page_id\":\"home\",\"user_id\":\"u1\"}'")
    print(f"  Read the stats:    curl -H \"Authorization: Bearer ${TOKEN_VARIABLE}\" "
          f"{env_values['HTTP_URL']}/stats    (after: set -a; . {RUN / 'stack.env'})")
    print(f"  Servers:           Kafka {env_values['KAFKA_BOOTSTRAP']}  "
          f"MongoDB {env_values['MONGO_URL']}  Redis {env_values['REDIS_URL']}")
    print(f"  Settings:          {RUN / 'stack.env'}    logs: {LOGS}/\n")


def names() -> list[str]:
    return sorted(p.stem for p in PIDS.glob("*.pid")) if PIDS.exists() else []


def down() -> None:
    # Front door first, then services, then the servers they depend on.
    order = ["nginx", "gateway", "query", "aggregator", "kafka", "ferretdb", "postgres", "redis"]
    for prefix in order:
        group = [name for name in names() if name.startswith(prefix)]
        # A Kafka cluster's nodes at once (stop_together); everything else one by one.
        stopped = stop_together(group) if prefix == "kafka" else [n for n in group if stop(n)]
        for name in stopped:
            say(name, "stopped")
    for name in names():  # anything left from an older layout
        if stop(name):
            say(name, "stopped")


def status() -> None:
    rows = {name: running_pid(name) for name in names()}
    print(json.dumps({name: pid for name, pid in rows.items()}, indent=2))


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "up"
    if command == "up":
        up()
    elif command == "down":
        down()
    elif command == "status":
        status()
    elif command == "stop" and len(argv) == 3:
        say(argv[2], "stopped" if stop(argv[2]) else "was not running")
    elif command == "provision":
        provision()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
