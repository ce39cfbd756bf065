"""Choosing who answers (Redis or MongoDB) and falling back when Redis cannot.

Why one place: the rules are easy to get subtly wrong when spread over handlers. Redis
answers when every bucket the ranges need still exists there (and, for per-page visitors,
when no minute bucket is needed: Redis keeps per-page visitor HyperLogLogs per hour and day
only). Otherwise, when Redis raises a connection-level error, or while Redis is known to
have lost its state (a rebuild is under way), MongoDB answers exactly.
MongoDB failing too is ``Unavailable`` (the handler answers 503).

Called by the handlers; may block on both stores.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from query_api.model import StatsReader
from query_api.ranges import TimeRange
from query_api.tiling import retained as bucket_retained
from query_api.tiling import tile

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unavailable(RuntimeError):
    """Neither store could answer."""


# Units with per-page visitor HyperLogLogs (``SiteKeys.bucket_page_visitors``): the
# aggregator keeps none per minute. Should it start to, add "m" here.
PAGE_VISITOR_UNITS = frozenset({"h", "d"})


def redis_can_answer(ranges: Sequence[TimeRange], now_ms: int, page_visitors: bool) -> bool:
    """Whether Redis still holds every bucket these ranges need (pure). ``page_visitors``:
    the answer includes some page's unique visitors."""
    for rng in ranges:
        if not rng.bounded:
            continue
        for bucket in tile(*rng.bounds()):
            if not bucket_retained(bucket, now_ms):
                return False
            if page_visitors and bucket.unit not in PAGE_VISITOR_UNITS:
                return False
    return True


class StatsService:
    def __init__(self, redis: StatsReader, mongo: StatsReader, clock_ms: Callable[[], int]
                 ) -> None:
        self.redis = redis
        self.mongo = mongo
        self.clock_ms = clock_ms

    async def answer(self, ranges: Sequence[TimeRange], page_visitors: bool,
                     query: Callable[[StatsReader], Awaitable[T]]) -> tuple[T, str]:
        """Run ``query`` on the reader that can answer ``ranges``; returns the result and the
        source (``redis`` or ``mongo``)."""
        if redis_can_answer(ranges, self.clock_ms(), page_visitors):
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
