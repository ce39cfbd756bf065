"""bench-replay: how fast ``python -m aggregator.recovery.replay`` rebuilds the aggregates
from the topic.

Runs the real CLI against the stack and times it from outside (wall time, start-up
included) as well as reading its own JSON summary (records read, counted, seconds). By
default it rebuilds one site, ``bench-small-site-0000`` (one of the query benchmark's small seeded
sites; not re-seeded here, its events are already on the topic once ``bench-query`` ran): the
replay still reads the whole topic, so the read rate is the full rebuild's, but only the
benchmark's own site is switched to a new generation while other people's tests run on the
same stack. ``BENCH_REPLAY_FULL=1`` rebuilds every site instead (a true full rebuild).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time

import orjson

from bench.cpu import CpuWindow, busiest, stack_groups
from bench.limits import KAFKA_PRODUCER
from bench.progress import say
from bench.results import Figure, Run
from bench.seed import SeedSpec
from bench.settings import ROOT, BenchSettings

SUITE = "replay"
SITE = SeedSpec().small_site(0)


def parse_summary(output: str) -> dict[str, object]:
    """The JSON summary line the replay prints last on stdout."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            summary: dict[str, object] = orjson.loads(line)
            return summary
    raise ValueError(f"no JSON summary in the replay's output: {output[-500:]!r}")


async def run_suite(s: BenchSettings, run: Run) -> None:
    full = os.environ.get("BENCH_REPLAY_FULL", "") in {"1", "true", "yes"}
    args = [] if full else ["--site", SITE]
    env = {**os.environ, "KAFKA_BOOTSTRAP": s.kafka_bootstrap, "KAFKA_TOPIC": s.topic,
           "REDIS_URL": s.redis_url, "MONGO_URL": s.mongo_url}
    say(SUITE, f"python -m aggregator.recovery.replay {' '.join(args) or '(every site)'}")
    window = CpuWindow(stack_groups())
    window.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/python"), "-m", "aggregator.recovery.replay", *args, cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE, stderr=sys.stderr)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=s.drain_timeout_s * 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {**window.stop(), "replay": round((after.ru_utime + after.ru_stime - before.ru_utime
                                             - before.ru_stime) / wall, 2)}
    summary = parse_summary(out.decode(errors="replace"))
    records = int(str(summary.get("records", 0)))
    say(SUITE, f"  {records:,} records in {wall:.1f}s wall ({records / wall:,.0f}/s); "
               f"the tool says {summary.get('records_per_s')}/s; busiest: {busiest(cpu)}")
    run.add(Figure(SUITE, f"rebuild {'every site' if full else 'site ' + SITE}",
                   records / wall if wall else 0.0, "events/s", None,
                   0 if proc.returncode == 0 else 1, KAFKA_PRODUCER,
                   {"wall_s": round(wall, 1), "summary": summary, "exit": proc.returncode,
                    "cpu_cores": cpu, "busiest": busiest(cpu),
                    "note": "records read from the topic per second of wall time, start-up "
                            "included"}))
