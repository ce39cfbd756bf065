"""``python -m bench.chaos`` (``make chaos``): faults under load on a private stack, then the
exact check; exit 1 if anything was lost or double-counted or a check failed.

    python -m bench.chaos                       every fault the stack allows
    python -m bench.chaos --faults gateway_kill,redis_flush
    python -m bench.chaos --list                the catalogue
    CHAOS_SECONDS=30 CHAOS_RATE=500 CHAOS_BROKERS=3 CHAOS_KEEP=1 CHAOS_PORT_BASE=20000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from bench.chaos import private_stack, report
from bench.chaos.faults import CATALOGUE
from bench.chaos.runner import Runner, verdicts
from bench.chaos.settings import ChaosSettings
from bench.limits import newest_kafka_libs
from bench.machine import machine, versions
from bench.progress import say
from bench.settings import BenchSettingsError

# Where infra/stack.py keeps the Kafka distribution the stack runs (its version goes in the JSON).
KAFKA_CACHE = Path(os.environ.get("PAGEVIEWS_CACHE", Path.home() / ".cache" / "pageviews"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", default=None,
                   help="comma-separated fault names (default: all the stack allows)")
    p.add_argument("--list", action="store_true", help="print the fault catalogue and exit")
    args = p.parse_args(argv)
    if args.list:
        for fault in CATALOGUE:
            needs = f" (needs {fault.brokers} brokers: CHAOS_BROKERS={fault.brokers})" \
                if fault.brokers > 1 else ""
            print(f"{fault.name:<22} {fault.description}{needs}")
        return 0
    try:
        settings = ChaosSettings.from_env(os.environ, args.faults)
    except BenchSettingsError as exc:  # ChaosSettingsError is one too
        print(exc, file=sys.stderr)
        return 2
    unrunnable = [f.name for f in CATALOGUE
                  if f.name in settings.faults and f.brokers > settings.brokers]
    if unrunnable:
        print(f"{unrunnable} need a Kafka cluster: CHAOS_BROKERS=3", file=sys.stderr)
        return 2
    # aiokafka logs every failed reconnect of the lag sampler while Kafka is down on purpose
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    say("chaos", f"faults: {', '.join(settings.faults)}; {settings.rate:g} events/s; "
                 f"CHAOS_SECONDS={settings.seconds:g}; brokers {settings.brokers}")
    before = machine()
    try:
        target = private_stack.start(settings)
        run = asyncio.run(Runner(target, settings, say).run())
    except private_stack.ChaosStackError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        private_stack.stop(settings)
    data = report.as_json(run, before, versions(newest_kafka_libs(KAFKA_CACHE)))
    path = report.save(data, settings.results_dir)
    print(f"\nChaos run {data['started_at']} ({path}), CHAOS_SECONDS={settings.seconds:g}, "
          f"{settings.rate:g} events/s, {before['cores']} cores, load average before "
          f"{before['load_average_before']}\n")
    print(report.render(data))
    print()
    for fault in data["faults"]:
        print(f"- {fault['fault']}: {fault['description']}; injection {fault['inject_s']} s; "
              f"notes {fault['notes']}")
    exact = data["exact"] or {}
    print(f"\nexact check: {'ok' if exact.get('ok') else 'FAILED'}; compared "
          f"{exact.get('checked')}; lost {exact.get('lost')}, double-counted "
          f"{exact.get('double_counted')}")
    failed = verdicts(run)
    for line in failed[:50]:
        print(f"FAILED: {line}")
    print("chaos: " + ("PASSED" if not failed else f"FAILED ({len(failed)} problems)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
