"""Waiting for the stack's aggregators to catch up, between measurements.

Ingest benchmarks leave a backlog on the stack's topic; a freshness or query figure taken
while the aggregators still work it off would measure the backlog, not the pipeline. The
time it takes is itself a figure: the stack's catch-up rate.
"""

from __future__ import annotations

import asyncio
import time

from bench.kafka import GroupLag
from bench.progress import say
from bench.settings import BenchSettings


async def wait_for_stack(s: BenchSettings, suite: str, threshold: int = 0
                         ) -> tuple[int, float]:
    """Until the stack's aggregator group is at most ``threshold`` records behind (bounded by
    ``drain_timeout_s``). Returns (records drained, seconds it took)."""
    async with GroupLag(s.kafka_bootstrap, s.topic, s.aggregator_group) as group:
        first = await group.lag()
        started = time.monotonic()
        last_report = 0.0
        lag = first
        while lag > threshold:
            now = time.monotonic()
            if now - started > s.drain_timeout_s:
                say(suite, f"stack still {lag:,} records behind after {s.drain_timeout_s:g}s; "
                           "going on")
                break
            if now - last_report >= 5:
                say(suite, f"waiting for the stack's aggregators: {lag:,} records behind")
                last_report = now
            await asyncio.sleep(0.5)
            lag = await group.lag()
        return first - lag, time.monotonic() - started
