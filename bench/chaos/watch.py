"""Watching the stack while faults run: the group's lag, and when a fault counts as over.

Why: "seconds to recover" must mean the same for every fault. It is the time from the
injection to the first moment every answer is right again: every part of the stack runs
(its recorded pid alive) and is ready (each service's ``/readyz``, NGINX's health check),
and ``/stats`` for every chaos site answers from Redis (``X-Stats-Source: redis``) with a
total that includes at least every event acknowledged before the injection. Polled every
half second, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence

import aiohttp

from bench.chaos.target import ChaosTarget
from bench.chaos.timeline import Sample
from bench.kafka import GroupLag

POLL_S = 0.5


class LagSampler:
    """Samples the aggregator group's lag once a second in the background; a sample is None
    while Kafka cannot answer (the client is rebuilt after repeated failures)."""

    def __init__(self, target: ChaosTarget) -> None:
        self._target = target
        self.samples: list[Sample] = []
        self._task: asyncio.Task[None] | None = None

    def latest(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        env = self._target.env
        while True:
            lag: GroupLag | None = None
            try:
                lag = GroupLag(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"], env["AGGREGATOR_GROUP"])
                await asyncio.wait_for(lag.__aenter__(), timeout=5)
                failures = 0
                while failures < 3:
                    started = time.monotonic()
                    value: int | None
                    try:
                        value = await asyncio.wait_for(lag.lag_if_known(), timeout=2)
                        failures = 0
                    except Exception:
                        value, failures = None, failures + 1
                    self.samples.append((started, value))
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            except asyncio.CancelledError:
                raise
            except Exception:
                self.samples.append((time.monotonic(), None))
                await asyncio.sleep(1.0)
            finally:
                if lag is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(lag.__aexit__(None, None, None), timeout=5)


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def not_ready(target: ChaosTarget, http: aiohttp.ClientSession,
                    acked_before: Mapping[str, int]) -> list[str]:
    """What is not right yet (empty: recovered)."""
    problems = [f"{name} not running" for name in target.dead_parts()]
    services = [*target.urls("GATEWAY_URLS"), *target.urls("QUERY_URLS"),
                *target.urls("AGGREGATOR_URLS")]
    ready = await asyncio.gather(*(_ok(http, f"{u}/readyz") for u in services),
                                 _ok(http, f"{target.http_url}/nginx-healthz"))
    problems += [f"{u} not ready" for u, ok in zip(services, ready, strict=False) if not ok]
    if not ready[-1]:
        problems.append("nginx not answering")
    if problems:
        return problems
    for site, acked in sorted(acked_before.items()):
        try:
            async with http.get(f"{target.http_url}/stats",
                                params={"site_id": site, "limit": "1"},
                                headers=target.auth()) as response:
                body = await response.json() if response.status == 200 else {}
                source = response.headers.get("X-Stats-Source", "")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            problems.append(f"/stats {site}: {type(exc).__name__}")
            continue
        total = int(body.get("total_views", -1))
        if status != 200 or source != "redis" or total < acked:
            problems.append(f"/stats {site}: {status} from {source or '?'}, "
                            f"{total} of {acked} views")
    return problems


async def wait_recovered(target: ChaosTarget, acked_before: Mapping[str, int],
                         since: float, timeout_s: float) -> tuple[float | None, Sequence[str]]:
    """Seconds from ``since`` (monotonic) to the first check that found nothing wrong, or
    None and the last problems after ``timeout_s``."""
    deadline = since + timeout_s
    problems: Sequence[str] = ["not checked"]
    # /stats answered from MongoDB (Redis rebuilding) can take seconds on FerretDB
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while time.monotonic() < deadline:
            checked_at = time.monotonic()
            problems = await not_ready(target, http, acked_before)
            if not problems:
                return checked_at - since, ()
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - checked_at)))
    return None, problems
