"""``python -m bench SUITE...``: run benchmark suites, save JSON, print the table.

Suites: ingest, query, memory, e2e, aggregator, hot, replay, or ``all``; ``report`` draws the
charts of the latest results instead. The limits each chosen suite is compared with are measured
first, in the same run, while the machine is otherwise as quiet as it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable

from bench import (
    aggregator,
    e2e,
    fallback,
    goals,
    hot,
    ingest,
    limits,
    memory,
    query,
    replay,
    table,
)
from bench.machine import machine, versions
from bench.progress import say
from bench.results import Run, save
from bench.settings import BenchSettings

Step = Callable[[BenchSettings, Run], Awaitable[None]]
# Quiet first, backlog last.
ORDER = ("query", "memory", "e2e", "ingest", "aggregator", "hot", "replay")
SUITES: dict[str, Step] = {"ingest": ingest.run_suite, "query": query.run_suite,
                           "memory": memory.run_suite, "e2e": e2e.run_suite,
                           "aggregator": aggregator.run_suite, "hot": hot.run_suite,
                           "replay": replay.run_suite}
LIMITS: dict[str, tuple[Step, ...]] = {
    "ingest": (limits.nginx_static, limits.aiohttp_trivial, limits.kafka_producer),
    "query": (limits.nginx_static, limits.aiohttp_trivial, limits.redis_limits),
    "memory": (),
    "e2e": (),
    "aggregator": (limits.mongo_insert, limits.redis_limits),
    "hot": (),
    "replay": (limits.kafka_producer,),
}


def limits_table(run_json: dict[str, object]) -> str:
    rows = [(name, f"{table.number(lim['value'])} {lim['unit']}", lim["how"])
            for name, lim in dict(run_json["limits"]).items()]  # type: ignore[call-overload]
    return table.render(rows, ("limit", "measured", "how"))


async def run_suites(s: BenchSettings, chosen: tuple[str, ...]) -> Run:
    run = Run(chosen, machine(), versions(limits.kafka_libs(s)), s.as_json())
    steps: list[Step] = []
    for suite in chosen:
        steps += [step for step in LIMITS[suite] if step not in steps]
    for step in steps:
        await step(s, run)
    for suite in chosen:
        say(suite, "starting")
        await SUITES[suite](s, run)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("suites", nargs="+", choices=[*SUITES, "all", "report"])
    args = p.parse_args(argv)
    if "report" in args.suites:
        from bench.report import draw  # matplotlib only when drawing
        for path in draw(BenchSettings().results_dir):
            print(path)
        return 0
    s = BenchSettings.from_env(os.environ)
    chosen = ORDER if "all" in args.suites else tuple(x for x in ORDER if x in args.suites)
    run = asyncio.run(run_suites(s, chosen))
    path = save(run, s.results_dir)
    data = json.loads(path.read_text())
    print(f"\nResults ({path.relative_to(s.results_dir.parent.parent)}), "
          f"BENCH_SECONDS={s.seconds:g}, load average before: "
          f"{run.machine['load_average_before']}\n")
    print(table.render(table.rows(data)))
    print()
    print(limits_table(data))
    if "query" in chosen:
        print()
        print(query.summary_table(data))
    goal_rows = goals.rows(data)
    if goal_rows:
        print()
        print(table.render(goal_rows, goals.HEADERS))
    for note in run.notes:
        print(f"- {note}")
    print()
    for check in run.checks:
        verdict = "ok" if check["ok"] else "FAILED: " + "; ".join(check["differences"][:20])
        print(f"{check['suite']}: exactly-once: {verdict} ({check['sites']} sites, "
              f"{check['acked']:,} events acknowledged; {check['ambiguous']:,} ambiguous, "
              f"{check.get('ambiguous_counted', 0):,} of them counted)")
    if not run.exact:
        print("exactly-once FAILED: see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(fallback.main() if sys.argv[1:] == ["fallback"] else main())
