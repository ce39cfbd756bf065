"""Choosing who answers (Redis or MongoDB) and falling back when Redis cannot.

Why one place: the rules are easy to get subtly wrong when spread over handlers. Redis
answers when every bucket the ranges need still exists there. Otherwise, when Redis raises a
connection-level error, or while Redis is known to have lost its state (a rebuild is under
way), MongoDB answers exactly. MongoDB failing too is ``Unavailable`` (the handler answers 503).

Called by the handlers; may block on both stores.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
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


def redis_can_answer(ranges: Sequence[TimeRange], now_ms: int, retention: Retention) -> bool:
    """Whether Redis still holds every bucket these ranges need (pure)."""
    return all(bucket_retained(bucket, now_ms, retention)
               for rng in ranges if rng.bounded for bucket in tile(*rng.bounds()))


class StatsService:
    def __init__(self, redis: StatsReader, mongo: StatsReader, clock_ms: Callable[[], int],
                 retention: Retention) -> None:
        self.redis = redis
        self.mongo = mongo
        self.clock_ms = clock_ms
        self.retention = retention  # the aggregators' bucket expiry: the same settings

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
            return await query(self.mongo), self.mongo.source
        except PyMongoError as exc:
            log.warning("mongo_unavailable", extra={"fields": {"error": repr(exc)}})
            raise Unavailable("neither Redis nor MongoDB could answer") from exc
