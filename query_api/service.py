"""Choosing who answers (Redis or MongoDB) and falling back when Redis cannot.

Why one place: the rules are easy to get subtly wrong when spread over handlers. Redis
answers when every bucket the ranges need still exists there. Otherwise, when Redis raises a
connection-level error, or while Redis is known to have lost its state (a rebuild is under
way), MongoDB answers exactly. MongoDB failing too is ``Unavailable`` (the handler answers 503).

MongoDB answers scan raw events and are costly, so at most ``FallbackGate.slots`` run at
once in a process; a request that cannot get a turn within the gate's wait is ``Busy``
(503 with Retry-After) instead of queueing without bound behind a flood of them.

Called by the handlers; may block on both stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from contracts.settings import Retention
from query_api.model import StatsReader
from query_api.ranges import TimeRange
from query_api.tiling import retained as bucket_retained
from query_api.tiling import tile

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unavailable(RuntimeError):
    """Neither store could answer."""


class Busy(Unavailable):
    """Every MongoDB turn stayed taken for the whole wait: try again shortly."""


class FallbackGate:
    """At most ``slots`` MongoDB answers at once; a turn is waited for ``wait_s`` at most.
    Used on the event loop by ``StatsService``; waiting never blocks the loop."""

    def __init__(self, slots: int, wait_s: float,
                 on_refused: Callable[[], None] | None = None) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._free = asyncio.Semaphore(slots)
        self.in_use = 0  # for /metrics
        self._on_refused = on_refused

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._free.acquire()
        except TimeoutError:
            if self._on_refused is not None:
                self._on_refused()
            raise Busy(f"all {self.slots} MongoDB answer slots stayed busy for "
                       f"{self.wait_s:g} s; retry shortly") from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._free.release()


def redis_can_answer(ranges: Sequence[TimeRange], now_ms: int, retention: Retention) -> bool:
    """Whether Redis still holds every bucket these ranges need (pure)."""
    return all(bucket_retained(bucket, now_ms, retention)
               for rng in ranges if rng.bounded for bucket in tile(*rng.bounds()))


class StatsService:
    def __init__(self, redis: StatsReader, mongo: StatsReader, clock_ms: Callable[[], int],
                 retention: Retention, gate: FallbackGate | None = None) -> None:
        self.redis = redis
        self.mongo = mongo
        self.clock_ms = clock_ms
        self.retention = retention  # the aggregators' bucket expiry: the same settings
        self.gate = gate or FallbackGate(slots=4, wait_s=1.0)

    async def answer(self, ranges: Sequence[TimeRange],
                     query: Callable[[StatsReader], Awaitable[T]]) -> tuple[T, str]:
        """Run ``query`` on the reader that can answer ``ranges``; returns the result and the
        source (``redis`` or ``mongo``)."""
        if redis_can_answer(ranges, self.clock_ms(), self.retention):
            try:
                if await self.redis.complete():
                    return await query(self.redis), self.redis.source
            except (RedisError, OSError) as exc:
                log.warning("redis_unavailable_falling_back", extra={"fields": {
                    "error": repr(exc)}})
        try:
            async with self.gate.turn():
                return await query(self.mongo), self.mongo.source
        except PyMongoError as exc:
            log.warning("mongo_unavailable", extra={"fields": {"error": repr(exc)}})
            raise Unavailable("neither Redis nor MongoDB could answer") from exc
