"""Waiting for the stack's aggregators to catch up, between measurements.

Ingest benchmarks leave a backlog on the stack's topic; a freshness or query figure taken
while the aggregators still work it off would measure the backlog, not the pipeline. The
time it takes is itself a figure: the stack's catch-up rate.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

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


async def wait_for_redis_answers(s: BenchSettings, suite: str) -> bool:
    """Until the query API answers from Redis (``X-Stats-Source: redis``). While Redis is
    being rebuilt (after a flush or restart, e.g. by a failure test sharing the stack) it
    answers from MongoDB, and on FerretDB those answers are too slow to measure anything.
    Bounded by ``drain_timeout_s``; False if it never did."""
    url = f"{s.http_url}/stats/realtime?site_id=bench-query"
    started = time.monotonic()
    last_report = 0.0
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() - started < s.drain_timeout_s:
            try:
                async with http.get(url, headers=s.stats_headers()) as response:
                    await response.read()
                    if response.status == 200 and response.headers.get(
                            "X-Stats-Source") == "redis":
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() - last_report >= 5:
                say(suite, "waiting for the query API to answer from Redis (a rebuild runs?)")
                last_report = time.monotonic()
            await asyncio.sleep(1)
    return False
