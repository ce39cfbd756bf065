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
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from aggregator.counting.redis_sink import APPLY_SCRIPT
from bench import wrk
from bench.events import gateway_record_size, page_views
from bench.kafka import private_topic
from bench.procs import Helper, helpers, spare_port, wait_http
from bench.progress import say
from bench.results import Limit, Run
from bench.settings import ROOT, BenchSettings
from contracts.mongo import EVENT_INDEXES, event_document

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
            say("limits", f"trivial aiohttp x{processes} behind a private NGINX, "
                          f"{s.seconds:g}s")
            via = await wrk.run(f"http://127.0.0.1:{nginx_port}/track", "trivial.lua",
                                LIMIT_CONNECTIONS, s.seconds, s.wrk_threads)
            run.add_limit(Limit(AIOHTTP_VIA_NGINX, via.rps, "req/s",
                                f"wrk -c{LIMIT_CONNECTIONS} POST of a /track body to "
                                f"{processes} bench.trivial_app processes behind a private "
                                f"NGINX like the front door; p99 {via.latency.p99:.1f} ms"))
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
    jars = sorted(s.cache_dir.glob("kafka-*/libs/kafka-tools-*.jar"),
                  key=lambda p: p.stat().st_mtime)
    return jars[-1].parent if jars else None


PERF_SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
                          r"([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, "
                          r"(\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th")


def parse_producer_performance(output: str) -> dict[str, float]:
    """The final summary line of ``ProducerPerformance``."""
    found = PERF_SUMMARY.findall(output)
    if not found:
        raise ValueError(f"no ProducerPerformance summary in: {output[-1000:]!r}")
    last = [float(x) for x in found[-1]]
    return {"records": last[0], "records_per_s": last[1], "mb_per_s": last[2],
            "avg_ms": last[3], "max_ms": last[4], "p50_ms": last[5], "p95_ms": last[6],
            "p99_ms": last[7], "p999_ms": last[8]}


async def kafka_producer(s: BenchSettings, run: Run) -> None:
    libs = kafka_libs(s)
    if libs is None:
        run.notes.append("Kafka tools jar not found: no Kafka producer limit")
        return
    size = gateway_record_size()
    records = int(max(200_000, 40_000 * s.seconds))  # JVM warm-up needs a few seconds
    props = ["acks=all", "enable.idempotence=true", "linger.ms=5", "batch.size=262144",
             f"bootstrap.servers={s.kafka_bootstrap}"]
    async with private_topic(s.kafka_bootstrap, "perf") as topic:
        say("limits", f"Kafka ProducerPerformance, {records:,} records of {size} B")
        proc = await asyncio.create_subprocess_exec(
            "java", "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
            "--topic", topic.name, "--num-records", str(records), "--record-size", str(size),
            "--throughput", "-1", "--command-property", *props,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60 + 10 * s.seconds)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    perf = parse_producer_performance(out.decode(errors="replace"))
    run.add_limit(Limit(KAFKA_PRODUCER, perf["records_per_s"], "records/s",
                        f"org.apache.kafka.tools.ProducerPerformance, {size}-byte records "
                        f"(the gateway's), {' '.join(props[:-1])}, 6 partitions; "
                        f"p99 {perf['p99_ms']:.0f} ms at full throttle"))


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


async def mongo_insert(s: BenchSettings, run: Run, batch: int = 2000) -> None:
    """Bare ``insert_many`` of the aggregator's documents (with its indexes), batches of its
    batch size, into a collection of the benchmark database that is dropped afterwards."""
    say("limits", f"MongoDB insert_many of {batch}-event batches, {s.seconds:g}s")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(s.mongo_url)
    collection = client[s.bench_mongo_db][f"insert_limit_{uuid.uuid4().hex[:8]}"]
    try:
        for name, keys in EVENT_INDEXES:
            await collection.create_index(keys, name=name)
        now_ms = int(time.time() * 1000)
        inserted, busy = 0, 0.0
        deadline = time.monotonic() + s.seconds
        seed = 0
        while time.monotonic() < deadline:
            seed += 1
            docs = [event_document(e, 0, inserted + i) for i, e in
                    enumerate(page_views(batch, ["bench-mongo"], now_ms, seed=seed))]
            started = time.monotonic()
            await collection.insert_many(docs, ordered=False)
            busy += time.monotonic() - started
            inserted += len(docs)
        run.add_limit(Limit(MONGO_INSERT, inserted / busy if busy else 0.0, "docs/s",
                            f"insert_many(ordered=False) of {batch} event documents a call "
                            f"with the events indexes, {inserted:,} documents"))
    finally:
        await collection.drop()
        await client.close()
