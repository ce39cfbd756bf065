"""Noticing that Redis lost the aggregates, and rebuilding them, from inside the aggregators.

Redis restarted empty or flushed loses ``intact_key()`` with everything else (on a Redis
Cluster, each master keeps a copy: ``contracts.markers``); a Redis in an
older layout never had this layout's key. Every aggregator checks for it each second; while
it is missing the query API answers from MongoDB, and the one aggregator that takes the
rebuild lock rebuilds into a new generation (``aggregator.recovery.rebuild``) from what
MongoDB holds below the group's commits and then the topic (so history past the topic's
retention is kept) and sets the key again when every site is switched.
The lock expires unless its holder keeps renewing it, so a rebuilder that dies is replaced
within seconds. Live counting goes on throughout; the rebuild's switch makes it exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from aggregator.counting.pipeline import MaxPages, default_max_pages
from aggregator.metrics import AggregatorMetrics
from aggregator.outage import Outage
from aggregator.recovery.rebuild import MongoHistory, Rebuild, RebuildLost
from aggregator.recovery.topic_reader import TopicReader
from contracts.keys import LAYOUT_VERSION, intact_key, rebuild_lock_key
from contracts.markers import Markers
from contracts.redis_client import RedisClient
from contracts.settings import Retention

log = logging.getLogger(__name__)
LOCK_TTL_MS = 15_000

# KEYS: lock, intact, then every older layout's intact. ARGV: token, now (ms). Marks Redis
# intact only if this rebuild still holds the lock: a flush during the rebuild took the lock
# too, and the rebuild starts over. Every older layout's marker goes (an upgrade may skip a
# layout: 1 to 3): an older aggregator must not take this layout's generations for its own.
FINISH_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1], unpack(KEYS, 3))
return 1
"""
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class LossWatch:
    def __init__(self, redis: RedisClient, reader: Callable[[], TopicReader], instance: str,
                 metrics: AggregatorMetrics, retention: Retention,
                 history: Callable[[], Awaitable[MongoHistory]] | None = None,
                 interval_s: float = 1.0, max_pages: MaxPages = default_max_pages) -> None:
        self._redis = redis
        self._max_pages = max_pages
        self._history = history
        self._retention = retention
        self._metrics = metrics
        self._reader = reader
        self._instance = instance
        self._interval_s = interval_s
        self._markers = Markers(redis)
        self._finish = redis.register_script(FINISH_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self.intact: bool | None = None  # None until the first check
        self._outage = Outage(log, "loss_watch_error", "loss_watch_recovered")

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                self._note(await self._markers.holds(intact_key()))
                if not self.intact:
                    await self._rebuild_if_first()
                self._outage.succeeded()
            except (RedisError, OSError, KafkaError, PyMongoError) as exc:
                self._outage.failed(exc)  # logged once per outage, not every second
            except Exception:  # a bug must not stop the watch; the next second tries again
                log.exception("loss_watch_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval_s)

    def _note(self, intact: bool) -> None:
        if intact != self.intact:
            (log.info if intact else log.warning)(
                "redis_aggregates_intact" if intact else "redis_aggregates_lost", extra={
                    "fields": {"intact": intact}})
        self.intact = intact
        self._metrics.redis_intact.set(1 if intact else 0)

    async def _rebuild_if_first(self) -> None:
        lock = rebuild_lock_key()
        token = f"{self._instance}:{uuid.uuid4().hex}"
        if not await self._redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
            return  # another aggregator is rebuilding
        log.warning("rebuild_started", extra={"fields": {"reason": "redis_lost_aggregates"}})
        renewing = asyncio.create_task(self._keep_lock(token))
        try:
            history = None if self._history is None else await self._history()
            outcome = await Rebuild(self._redis, self._reader(), retention=self._retention,
                                    progress=_log_progress(),
                                    max_pages=self._max_pages).run(history=history)
        except RebuildLost:
            log.warning("rebuild_lost_midway", extra={"fields": {}})
            return
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        # Each master's copy first, the marker itself last: a master flushed in between
        # loses its copy, so the loss is still seen.
        await self._markers.set_copies(intact_key(), str(int(time.time() * 1000)))
        older = [intact_key(layout) for layout in range(1, LAYOUT_VERSION)]
        finished = await self._finish(keys=[lock, intact_key(), *older],
                                      args=[token, int(time.time() * 1000)])
        self._metrics.rebuilds.inc()
        log.info("rebuild_finished", extra={"fields": {
            "records": outcome.records, "counted": outcome.counted,
            "sites": len(outcome.switched), "seconds": round(outcome.seconds, 3),
            "marked_intact": bool(finished)}})

    async def _keep_lock(self, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            with contextlib.suppress(RedisError, OSError):
                await self._renew(keys=[rebuild_lock_key()], args=[token, LOCK_TTL_MS])


def _log_progress() -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5 or done >= total:
            last[0] = now
            log.info("rebuild_progress", extra={"fields": {"records": done, "of": total}})
    return report
