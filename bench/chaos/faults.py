"""The fault catalogue: each fault a name, what it does, and its injection (with its own
restore), so the runner treats every fault alike and ``--faults`` picks them by name.

An injection returns when the fault is over *from the operator's side* (the killed part was
restarted with ``infra/stack.py up``, the frozen one continued, the memory raised again);
whether the stack recovered is the runner's question, timed from the injection's start.
Details worth reporting (which part, its pid, how long it was down) go into ``ctx.notes``;
anything that makes the run fail goes into ``ctx.failures``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient

from bench.chaos.target import PYTHON, ROOT, ChaosTarget
from contracts.redis_client import connect_redis

SESSION_TIMEOUT_S = 10.0  # the aggregators' consumer group (aggregator/counting/source.py)
REPLAY_TIMEOUT_S = 600.0


@dataclass
class FaultContext:
    target: ChaosTarget
    rng: random.Random
    outage_s: float  # how long a part stays down where the fault holds it down
    say: Callable[[str], None]
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


Inject = Callable[[FaultContext], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    inject: Inject
    brokers: int = 1  # Kafka brokers the fault needs in the stack


async def _kill_and_restart(ctx: FaultContext, part: str) -> None:
    pid = ctx.target.signal(part, signal.SIGKILL)
    ctx.notes.update(part=part, pid=pid)
    ctx.say(f"SIGKILL {part} (pid {pid}); infra/stack.py up")
    await ctx.target.stack("up")


async def gateway_kill(ctx: FaultContext) -> None:
    parts = [p for p in ctx.target.part_names() if p.startswith("gateway-")]
    await _kill_and_restart(ctx, ctx.rng.choice(parts))


async def aggregator_kill(ctx: FaultContext) -> None:
    """At a random moment under load, so mostly with a batch between its MongoDB write, its
    Redis apply and its commit."""
    parts = [p for p in ctx.target.part_names() if p.startswith("aggregator-")]
    delay = ctx.rng.uniform(0.0, 1.0)
    ctx.notes["after_s"] = round(delay, 3)
    await asyncio.sleep(delay)
    await _kill_and_restart(ctx, ctx.rng.choice(parts))


async def aggregator_freeze(ctx: FaultContext) -> None:
    """SIGSTOP past the group's session timeout: the group evicts it and rebalances; when it
    continues, it finds itself fenced out and must not commit or count what it held."""
    part = ctx.rng.choice([p for p in ctx.target.part_names() if p.startswith("aggregator-")])
    frozen_s = SESSION_TIMEOUT_S + 5
    pid = ctx.target.signal(part, signal.SIGSTOP)
    ctx.notes.update(part=part, pid=pid, frozen_s=frozen_s)
    ctx.say(f"SIGSTOP {part} (pid {pid}) for {frozen_s:g} s")
    try:
        await asyncio.sleep(frozen_s)  # the fault's length, not a wait for a condition
    finally:
        ctx.target.signal(part, signal.SIGCONT)
    ctx.say(f"SIGCONT {part}")
    await ctx.target.stack("up")


async def _kafka_down(ctx: FaultContext, how: signal.Signals) -> None:
    parts = ctx.target.kafka_parts()
    for part in parts:
        if how == signal.SIGKILL:
            ctx.notes.setdefault("pids", {})[part] = ctx.target.signal(part, signal.SIGKILL)
        else:
            await ctx.target.stack("stop", part)  # SIGTERM, waits for a clean exit
    ctx.say(f"{how.name} {', '.join(parts)}; down for {ctx.outage_s:g} s")
    await asyncio.sleep(ctx.outage_s)
    started = time.monotonic()
    await ctx.target.stack("up")
    ctx.notes["restart_s"] = round(time.monotonic() - started, 1)


async def kafka_term(ctx: FaultContext) -> None:
    await _kafka_down(ctx, signal.SIGTERM)


async def kafka_kill(ctx: FaultContext) -> None:
    await _kafka_down(ctx, signal.SIGKILL)


async def redis_restart(ctx: FaultContext) -> None:
    await ctx.target.stack("stop", "redis")
    ctx.say(f"redis stopped (SIGTERM, data kept); down for {ctx.outage_s:g} s")
    await asyncio.sleep(ctx.outage_s)
    await ctx.target.stack("up")


async def redis_restart_empty(ctx: FaultContext) -> None:
    """Its data files removed: the aggregators find no intact marker and rebuild."""
    await ctx.target.stack("stop", "redis")
    data = ctx.target.directory / "data" / "redis"
    shutil.rmtree(data, ignore_errors=True)
    ctx.say("redis stopped and its data files removed; up")
    await ctx.target.stack("up")


async def redis_flush(ctx: FaultContext) -> None:
    client = connect_redis(ctx.target.env["REDIS_URL"], timeout_s=5.0)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    ctx.say("FLUSHALL")


async def mongo_outage(ctx: FaultContext) -> None:
    parts = [p for p in ("ferretdb", "postgres") if p in ctx.target.part_names()]
    for part in parts:
        await ctx.target.stack("stop", part)
    ctx.say(f"stopped {', '.join(parts)}; down for {ctx.outage_s:g} s")
    await asyncio.sleep(ctx.outage_s)
    await ctx.target.stack("up")


async def nginx_reload(ctx: FaultContext) -> None:
    """Three graceful reloads a second apart (new workers, old ones finish their requests)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = ctx.target.directory / "nginx"
    for _ in range(3):
        proc = await asyncio.create_subprocess_exec(
            nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "reload",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            ctx.failures.append(f"nginx -s reload exited {proc.returncode}: {out.decode()}")
        await asyncio.sleep(1.0)
    ctx.say("nginx reloaded 3 times")


async def redis_maxmemory(ctx: FaultContext) -> None:
    """``maxmemory`` below what Redis uses (noeviction: writes refused with OOM, the
    aggregators hold their batches), then raised back."""
    client = connect_redis(ctx.target.env["REDIS_URL"], timeout_s=5.0)
    try:
        original = str((await client.config_get("maxmemory"))["maxmemory"])
        used = int((await client.info("memory"))["used_memory"])
        lowered = max(1024 * 1024, used // 2)
        await client.config_set("maxmemory", lowered)
        ctx.notes.update(used_memory=used, lowered_to=lowered, original=original)
        ctx.say(f"maxmemory {lowered:,} (uses {used:,}) for {ctx.outage_s:g} s")
        ctx.notes["aggregators_said_oom"] = await _aggregator_says(ctx, "OutOfMemory",
                                                                  ctx.outage_s)
        await asyncio.sleep(max(0.0, ctx.outage_s - 1))
    finally:
        await client.config_set("maxmemory", original)
        await client.aclose()
    ctx.say(f"maxmemory back to {original}")


async def _aggregator_says(ctx: FaultContext, word: str, within_s: float) -> bool:
    """Whether an aggregator's /readyz names ``word`` within ``within_s`` (polled)."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            for url in ctx.target.urls("AGGREGATOR_URLS"):
                try:
                    async with http.get(f"{url}/readyz") as response:
                        if word in await response.text():
                            return True
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
            await asyncio.sleep(0.2)
    return False


async def replay(ctx: FaultContext) -> None:
    """``python -m aggregator.recovery.replay`` (what ``make replay`` runs) under load: a new
    generation rebuilt from the topic, switched to atomically."""
    ctx.say("python -m aggregator.recovery.replay")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "aggregator.recovery.replay", cwd=ROOT, env=ctx.target.service_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=REPLAY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        ctx.failures.append(f"replay did not finish in {REPLAY_TIMEOUT_S:g} s")
        return
    ctx.notes["replay_s"] = round(time.monotonic() - started, 1)
    ctx.notes["summary"] = out.decode(errors="replace").strip().splitlines()[-1:] or None
    if proc.returncode != 0:
        ctx.failures.append(f"replay exited {proc.returncode}: "
                            f"{err.decode(errors='replace')[-1000:]}")


async def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> leader's node id (-1: none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {int(p["partition"]): int(p["leader"]) for p in described[0]["partitions"]}


async def broker_leader_loss(ctx: FaultContext) -> None:
    """In a three-broker cluster: SIGKILL the broker leading most partitions of the topic;
    the others elect new leaders from the in-sync replicas (RF 3, min.insync.replicas 2);
    then it is restarted and catches up."""
    env = ctx.target.env
    leaders = await _leaders(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"])
    node, led = Counter(leaders.values()).most_common(1)[0]
    part = f"kafka-{node}"
    pid = ctx.target.signal(part, signal.SIGKILL)
    killed_at = time.monotonic()
    ctx.notes.update(part=part, pid=pid, partitions_led=led, leaders_before=leaders)
    ctx.say(f"SIGKILL {part} (pid {pid}), leader of {led} of {len(leaders)} partitions")
    deadline = killed_at + 120
    while True:
        try:
            now_leaders = await _leaders(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"])
        except Exception:
            now_leaders = {}
        if now_leaders and all(v not in (node, -1) for v in now_leaders.values()):
            ctx.notes.update(new_leaders_s=round(time.monotonic() - killed_at, 1),
                             leaders_after=now_leaders)
            break
        if time.monotonic() > deadline:
            ctx.failures.append(f"no new leaders 120 s after {part} was killed: {now_leaders}")
            break
        await asyncio.sleep(0.5)
    ctx.say(f"new leaders after {ctx.notes.get('new_leaders_s')} s; up")
    await ctx.target.stack("up")


async def slow_clients(ctx: FaultContext) -> None:
    from bench.chaos.slow_clients import run_slow_clients  # raw sockets; its own module

    await run_slow_clients(ctx)


# In run order: the faults after which the aggregators rebuild Redis from MongoDB come first,
# while the collection is small (the rebuild runs at a few hundred events/s under load here).
CATALOGUE: tuple[Fault, ...] = (
    Fault("redis_flush", "FLUSHALL on Redis: detected, answered from MongoDB, rebuilt",
          redis_flush),
    Fault("redis_restart_empty", "Redis stopped, its data files removed, started empty: "
          "detected and rebuilt", redis_restart_empty),
    Fault("replay", "python -m aggregator.recovery.replay under load (make replay)", replay),
    Fault("gateway_kill", "SIGKILL one gateway under load, restart it", gateway_kill),
    Fault("aggregator_kill", "SIGKILL one aggregator at a random moment (mid-batch), restart "
          "it", aggregator_kill),
    Fault("aggregator_freeze", "SIGSTOP one aggregator past the group's session timeout "
          f"({SESSION_TIMEOUT_S:g} s), then SIGCONT", aggregator_freeze),
    Fault("redis_restart", "Redis stopped (SIGTERM) and started again with its data",
          redis_restart),
    Fault("redis_maxmemory", "Redis maxmemory lowered below its use (writes refused), then "
          "raised", redis_maxmemory),
    Fault("mongo_outage", "FerretDB and its PostgreSQL stopped, then started", mongo_outage),
    Fault("kafka_term", "Kafka stopped with SIGTERM, then started", kafka_term),
    Fault("kafka_kill", "Kafka killed with SIGKILL, then started", kafka_kill),
    Fault("nginx_reload", "nginx -s reload three times under load (no failed request)",
          nginx_reload),
    Fault("slow_clients", "slow readers of /stats and slow writers to /events: cut by "
          "NGINX's timeouts, no service held", slow_clients),
    Fault("broker_leader_loss", "three brokers: SIGKILL the one leading most partitions, new "
          "leaders elected, restart it", broker_leader_loss, brokers=3),
)
BY_NAME = {f.name: f for f in CATALOGUE}
# Faults whose phase must see no failed request at all (not even one retried answer).
NO_RETRY_EXPECTED = frozenset({"nginx_reload", "slow_clients"})
