"""The chaos run, short: three faults under a steady load on the session's private stack.

The same runner and final check as ``make chaos`` (``bench/chaos``), given this stack's
directory and names: a gateway killed under load, an aggregator killed at a random moment
mid-batch, and an aggregator frozen past the group's session timeout, each restarted or
continued. Asserted: zero events lost, zero counted twice (MongoDB ids, every Redis
aggregate of the chaos sites), zero unexpected answers (a 4xx or a 5xx other than 503),
every fault recovered, and no part of the stack left dead or duplicated. Only the chaos
sites are read: the stack holds other tests' data.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from bench.chaos.runner import Runner, verdicts
from bench.chaos.settings import ChaosSettings
from bench.chaos.target import ChaosTarget
from tests.stack import PRIVATE_NAMES, Stack, restore

FAULTS = ("gateway_kill", "aggregator_kill", "aggregator_freeze")


def say(phase: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {phase:<22} {text}", file=sys.stderr, flush=True)


@pytest.mark.timeout(240)
async def test_three_faults_under_load_lose_nothing_and_count_nothing_twice(
        stack: Stack) -> None:
    target = ChaosTarget.from_directory(stack.directory, stack.port_base, PRIVATE_NAMES)
    settings = ChaosSettings(seconds=5, rate=200, faults=FAULTS, recovery_timeout_s=60,
                             settle_timeout_s=15, drain_timeout_s=30, check_timeout_s=90)
    try:
        run = await Runner(target, settings, say).run()
    finally:
        await asyncio.to_thread(restore)  # whatever a fault may have left down
    failures = verdicts(run)
    assert run.exact is not None
    assert failures == [], failures
    assert run.exact.lost == 0 and run.exact.double == 0
    assert [f.fault for f in run.faults] == list(FAULTS)
    assert all(f.recovered_s is not None for f in run.faults)
    summary = run.ledger.summary()
    assert sum(p.acked for p in summary) > 0.9 * sum(p.sent for p in summary)
    assert all(not p.errors for p in summary), [p.errors for p in summary]
