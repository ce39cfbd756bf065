"""The limits of this machine, measured in the same run as the pipeline's figures.

Each function measures one limit and adds it to the run: NGINX answering a static 204;
a trivial aiohttp handler (as many processes as there are gateways) behind a private NGINX
configured like the front door, and one such process hit directly; Kafka's own producer
tool with the gateway's record size and producer settings; redis-benchmark for the
commands the aggregator and query API send; a bare MongoDB ``insert_many`` of the
aggregator's documents. Every helper process is our own and is stopped afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from aggregator.counting.redis_sink import APPLY_SCRIPT
from bench import wrk
from bench.events import gateway_payloads, gateway_record_size
from bench.kafka import private_topic
from bench.procs import Helper, helpers, spare_port, wait_http
from bench.progress import say
from bench.results import Limit, Run
from bench.settings import ROOT, STACK_ENV, BenchSettings, read_env_file
from bench.stats import peak
from contracts.mongo import EVENT_INDEXES
from contracts.settings import AggregatorSettings, GatewaySettings
from contracts.topics import DEFAULT_PARTITIONS

NGINX_STATIC = "nginx-204"
AIOHTTP_VIA_NGINX = "aiohttp-via-nginx"
AIOHTTP_DIRECT = "aiohttp-1-process"
KAFKA_PRODUCER = "kafka-producer"
MONGO_INSERT = "mongo-insert"
LIMIT_CONNECTIONS = 64
NGINX_TEMPLATE = Path(__file__).resolve().parent / "nginx" / "trivial.conf.in"


async def nginx_static(s: BenchSettings, run: Run) -> None:
    say("limits", f"NGINX static 204, {LIMIT_CONNECTIONS} connections, {s.seconds:g}s")
    result = await wrk.run(f"{s.http_url}/nginx-static-204", "get.lua", LIMIT_CONNECTIONS,
                           s.seconds, s.wrk_threads)
    run.add_limit(Limit(NGINX_STATIC, result.rps, "req/s",
                        f"wrk -c{LIMIT_CONNECTIONS} GET /nginx-static-204 on the stack's NGINX; "
                        f"p99 {result.latency.p99:.1f} ms; wrk used {result.cpu_cores:.2f} "
                        "cores"))


def _render_nginx(directory: Path, port: int, upstream_ports: list[int]) -> Path:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    text = (NGINX_TEMPLATE.read_text().replace("@DIR@", str(directory))
            .replace("@PORT@", str(port)).replace("@SERVERS@", servers))
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


async def aiohttp_trivial(s: BenchSettings, run: Run) -> None:
    processes = max(1, len(s.gateway_urls))
    workdir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    logs = ROOT / ".run" / "logs" / "bench"
    try:
        with helpers() as started:
            ports = [spare_port() for _ in range(processes)]
            for port in ports:
                started.append(Helper(f"trivial-{port}",
                                      [str(ROOT / ".venv/bin/python"), "-m", "bench.trivial_app",
                                       str(port)], logs / f"trivial-{port}.log", cwd=ROOT))
            nginx_port = spare_port()
            conf = _render_nginx(workdir, nginx_port, ports)
            started.append(Helper("bench-nginx", ["nginx", "-p", str(workdir), "-c", str(conf),
                                                  "-e", str(workdir / "error.log")],
                                  logs / "bench-nginx.log"))
            for port, helper in zip(ports, started, strict=False):
                await wait_http(f"http://127.0.0.1:{port}/healthz", helper=helper)
            await wait_http(f"http://127.0.0.1:{nginx_port}/healthz", helper=started[-1])
            points: list[tuple[int, float]] = []
            p99: dict[int, float] = {}
            for connections in s.limit_connections:
                say("limits", f"trivial aiohttp x{processes} behind a private NGINX, "
                              f"{connections} connections, {s.seconds:g}s")
                via = await wrk.run(f"http://127.0.0.1:{nginx_port}/track", "trivial.lua",
                                    connections, s.seconds, s.wrk_threads)
                points.append((connections, via.rps))
                p99[connections] = via.latency.p99
                say("limits", f"  {via.rps:,.0f} req/s")
            best = peak(points)
            assert best is not None
            edge = (f"; still rising at c={best.concurrency}, the highest tried "
                    "(BENCH_LIMIT_CONNECTIONS)" if best.at_edge else "")
            run.add_limit(Limit(AIOHTTP_VIA_NGINX, best.value, "req/s",
                                f"wrk POST of a /track body to {processes} bench.trivial_app "
                                f"processes behind a private NGINX like the front door, the "
                                f"best of c={','.join(str(c) for c, _ in points)}: "
                                f"c={best.concurrency}, p99 {p99[best.concurrency]:.1f} ms"
                                f"{edge}"))
            say("limits", f"trivial aiohttp, one process directly, {s.seconds:g}s")
            direct = await wrk.run(f"http://127.0.0.1:{ports[0]}/track", "trivial.lua",
                                   LIMIT_CONNECTIONS, s.seconds, s.wrk_threads)
            run.add_limit(Limit(AIOHTTP_DIRECT, direct.rps, "req/s",
                                f"wrk -c{LIMIT_CONNECTIONS} straight to one trivial_app "
                                f"process; p99 {direct.latency.p99:.1f} ms"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kafka_libs(s: BenchSettings) -> Path | None:
    """The newest cached Kafka distribution's libs (the one ``make up`` runs)."""
    return newest_kafka_libs(s.cache_dir)


def newest_kafka_libs(cache_dir: Path) -> Path | None:
    jars = sorted(cache_dir.glob("kafka-*/libs/kafka-tools-*.jar"),
                  key=lambda p: p.stat().st_mtime)
    return jars[-1].parent if jars else None


PERF_SUMMARY = re.compile(r"(\d+) (?:steady state )?records sent, ([\d.]+) records/sec "
                          r"\(([\d.]+) MB/sec\), "
                          r"([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, "
                          r"(\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th")


def parse_producer_performance(output: str) -> dict[str, float]:
    """The final summary line of ``ProducerPerformance`` (with ``--warmup-records``, the
    steady-state one, printed last)."""
    found = PERF_SUMMARY.findall(output)
    if not found:
        raise ValueError(f"no ProducerPerformance summary in: {output[-1000:]!r}")
    last = [float(x) for x in found[-1]]
    return {"records": last[0], "records_per_s": last[1], "mb_per_s": last[2],
            "avg_ms": last[3], "max_ms": last[4], "p50_ms": last[5], "p95_ms": last[6],
            "p99_ms": last[7], "p999_ms": last[8]}


KEY_RANGE = 5000  # the wrk scripts' visitors: the gateway keys records by site:user


async def kafka_producer(s: BenchSettings, run: Run) -> None:
    """``ProducerPerformance`` sending our own events: its payloads are the gateway's encoded
    events (``--payload-file``), keyed over as many keys as the load has visitors, with the
    gateway's producer settings; the first quarter is JVM warm-up, left out
    (``--warmup-records``: the steady-state summary is the limit)."""
    libs = kafka_libs(s)
    if libs is None:
        run.notes.append("Kafka tools jar not found: no Kafka producer limit")
        return
    value, key = gateway_record_size()
    gateway = GatewaySettings.from_env({**read_env_file(STACK_ENV), **os.environ})
    # about BENCH_SECONDS at the ~130,000 records/s a quiet 2-core machine reaches
    records = int(max(200_000, 130_000 * s.seconds))
    warmup = records // 4
    props = ["acks=all", "enable.idempotence=true", f"linger.ms={gateway.linger_ms}",
             f"batch.size={gateway.max_batch_size}",
             f"compression.type={gateway.compression or 'none'}",
             f"bootstrap.servers={s.kafka_bootstrap}"]
    with tempfile.NamedTemporaryFile("wb", prefix="bench-payloads-", suffix=".txt") as payloads:
        payloads.write(b"\n".join(gateway_payloads()))
        payloads.flush()
        async with private_topic(s.kafka_bootstrap, "perf") as topic:
            say("limits", f"Kafka ProducerPerformance, {records:,} of our events "
                          f"(~{value} B), {warmup:,} of them warm-up")
            proc = await asyncio.create_subprocess_exec(
                "java", "-Xmx512m", "-cp", f"{libs}/*",
                "org.apache.kafka.tools.ProducerPerformance", "--topic", topic.name,
                "--num-records", str(records), "--warmup-records", str(warmup),
                "--payload-file", payloads.name, "--key-distribution", "random",
                "--record-key-range", str(KEY_RANGE), "--throughput", "-1",
                "--command-property", *props,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(),
                                                timeout=120 + 30 * s.seconds)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    perf = parse_producer_performance(out.decode(errors="replace"))
    say("limits", f"  {perf['records_per_s']:,.0f} records/s (steady state)")
    run.add_limit(Limit(KAFKA_PRODUCER, perf["records_per_s"], "records/s",
                        f"org.apache.kafka.tools.ProducerPerformance, {records:,} records "
                        f"(steady state after {warmup:,} of warm-up), values: the gateway's "
                        f"encoded events (~{value} B), keys: random over {KEY_RANGE:,} (the "
                        f"tool's integer keys, a few bytes; the gateway's site:user keys are "
                        f"~{key} B), the gateway's producer settings: {' '.join(props[:-1])},"
                        f" {DEFAULT_PARTITIONS} partitions; p99 {perf['p99_ms']:.0f} ms at "
                        "full throttle"))


def _redis_address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


REDIS_KEY = "bench:{redis-benchmark}"


def redis_commands(sha: str) -> dict[str, list[str]]:
    """The commands measured, each as the aggregator or the query API sends it; the apply
    script with the operations of one event (the aggregator merges a batch per site)."""
    k = REDIS_KEY
    ops = ('[["i",2,0,1],["z",3,0,"/p__rand_int__",-1],["p",4,0,"u__rand_int__"],'
           '["z",5,0,"/p__rand_int__",-1]]')
    return {
        "INCRBY": ["INCRBY", f"{k}:views", "1"],
        "ZINCRBY": ["ZINCRBY", f"{k}:rank", "-1", "/p__rand_int__"],
        "PFADD": ["PFADD", f"{k}:hll", "u__rand_int__"],
        "EVALSHA apply": ["EVALSHA", sha, "5", f"{k}:offsets", f"{k}:views", f"{k}:rank",
                          f"{k}:hll", f"{k}:top", "0", "1", "0", ops],
        "GET": ["GET", f"{k}:views"],
        "PFCOUNT": ["PFCOUNT", f"{k}:hll"],
        "ZRANGE 10": ["ZRANGE", f"{k}:rank", "0", "9", "WITHSCORES"],
        "ZRANGE 100": ["ZRANGE", f"{k}:rank", "0", "99", "WITHSCORES"],
    }


def parse_redis_benchmark(output: str) -> tuple[float, float]:
    """(requests/s, p99 ms) from ``redis-benchmark --csv`` output. The test name (first
    column) is the command line, unescaped, so the figures are read from the end."""
    if "Error from server" in output:
        raise ValueError(f"redis-benchmark got errors: {output[:500]!r}")
    rows = [row for row in csv.reader(io.StringIO(output)) if len(row) >= 8 and row[0] != "test"]
    if not rows:
        raise ValueError(f"no redis-benchmark result in: {output[-500:]!r}")
    return float(rows[-1][-7]), float(rows[-1][-2])


async def redis_limits(s: BenchSettings, run: Run) -> None:
    host, port = _redis_address(s.redis_url)
    redis = Redis(host=host, port=port)
    try:
        sha = str(await redis.script_load(APPLY_SCRIPT))
        requests = int(max(10_000, 5_000 * s.seconds))
        for name, command in redis_commands(sha).items():
            proc = await asyncio.create_subprocess_exec(
                "redis-benchmark", "-h", host, "-p", str(port), "-c", "50", "-n",
                str(requests),
                "-r", "1000", "-q", "--csv", *command,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
            rps, p99 = parse_redis_benchmark(out.decode(errors="replace"))
            run.add_limit(Limit(f"redis {name}", rps, "req/s",
                                f"redis-benchmark -c 50 (no pipelining) {command[0]} on "
                                f"keys of up to 1,000 members; p99 {p99:.2f} ms"))
        say("limits", "redis-benchmark: " + ", ".join(
            f"{name} {run.limits[f'redis {name}'].value:,.0f}/s" for name in redis_commands(sha)))
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{REDIS_KEY}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def mongo_limit_name(aggregators: int, writers_each: int) -> str:
    return f"{MONGO_INSERT} {aggregators}x{writers_each}"


def aggregator_chunk(writers_each: int) -> int:
    """Documents per ``insert_many`` when an aggregator splits its batch among its writers."""
    batch = AggregatorSettings.from_env({**read_env_file(STACK_ENV), **os.environ}).max_records
    return max(1, -(-batch // writers_each))


async def mongo_ceiling(s: BenchSettings, run: Run, processes: int, writers_each: int) -> None:
    """``processes`` x ``writers_each`` parallel ``insert_many`` clients (bench.mongo_ceiling)
    for ``BENCH_SECONDS`` into one fresh collection with the events indexes, dropped after."""
    name = mongo_limit_name(processes, writers_each)
    chunk = aggregator_chunk(writers_each)
    suffix = uuid.uuid4().hex[:8]
    coll_name = f"insert_limit_{suffix}"
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(s.mongo_url)
    collection = client[s.bench_mongo_db][coll_name]
    logs = ROOT / ".run" / "logs" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    say("limits", f"MongoDB insert ceiling: {processes} process(es) x {writers_each} writer(s),"
                  f" insert_many of {chunk} event documents, {s.seconds:g}s")
    try:
        for index_name, keys in EVENT_INDEXES:
            await collection.create_index(keys, name=index_name)
        procs = [await asyncio.create_subprocess_exec(
            str(ROOT / ".venv/bin/python"), "-m", "bench.mongo_ceiling", "--url", s.mongo_url,
            "--db", s.bench_mongo_db, "--collection", coll_name, "--writers", str(writers_each),
            "--chunk", str(chunk), "--seconds", str(s.seconds), "--prefix", f"{suffix}-p{p}",
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE) for p in range(processes)]
        results = []
        try:
            for proc in procs:  # each connected, its documents built
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
                if line.strip() != b"ready":
                    raise RuntimeError(f"bench.mongo_ceiling did not start: {line!r}")
            start_at = f"{time.time() + 0.2}\n".encode()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(start_at)
                await proc.stdin.drain()
            for proc in procs:
                out, err = await asyncio.wait_for(proc.communicate(), timeout=120 + 2 * s.seconds)
                if proc.returncode != 0:
                    raise RuntimeError(f"bench.mongo_ceiling failed: {err.decode()[-1000:]}")
                results.append(orjson.loads(out.splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        inserted = sum(int(r["inserted"]) for r in results)
        seconds = max(float(r["seconds"]) for r in results)
        errors = sum(int(r["errors"]) for r in results)
        if not inserted or seconds <= 0:
            run.notes.append(f"limits: {name} inserted nothing ({errors} failed calls): no "
                             "ceiling")
            return
        value = inserted / seconds
        run.add_limit(Limit(name, value, "docs/s",
                            f"{processes} process(es) x {writers_each} concurrent "
                            f"insert_many(ordered=False) of {chunk} event documents "
                            f"(contracts.mongo.event_document) into one collection with the "
                            f"events indexes, {inserted:,} documents in {seconds:.1f}s"
                            + (f", {errors} failed calls" if errors else "")))
        say("limits", f"  {value:,.0f} docs/s")
    finally:
        await collection.drop()
        await client.close()


async def mongo_insert(s: BenchSettings, run: Run) -> None:
    """The ceilings the drain benchmark compares with: as many writers as one and as two
    aggregators use (``AGGREGATOR_MONGO_WRITERS`` each)."""
    for aggregators in (1, 2):
        await mongo_ceiling(s, run, aggregators, s.mongo_writers)
