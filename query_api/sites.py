"""Which sites there are, for the dashboard's site picker (``GET /stats/sites``).

Why its own module: it is no stats question over a range (those are ``model.StatsReader``'s),
just a directory. The aggregator adds every site it applies events for to the Redis set
``contracts.keys.sites_key()``. When Redis is down, or has lost its state (no
``contracts.keys.intact_key()`` marker: flushed or restarted empty, its set may list only
the sites seen since), or that set is empty, MongoDB's distinct site ids answer instead:
a ``$group`` aggregation, which (unlike ``distinct`` on FerretDB) takes the same time limit as
the other fallback queries.

Called by the ``/stats/sites`` handler; may block on both stores; raises ``Unavailable``
when neither answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from contracts.keys import intact_key, sites_key
from contracts.markers import Markers
from contracts.redis_client import RedisClient
from query_api.service import Unavailable

log = logging.getLogger(__name__)


class SiteLister(Protocol):
    async def sites(self) -> tuple[list[str], str]:
        """Every known site id, sorted, and the store that answered (``redis``/``mongo``)."""
        ...


class SiteDirectory:
    """Redis's set of sites, with MongoDB as the fallback."""

    def __init__(self, redis: RedisClient, events: AsyncCollection[dict[str, Any]],
                 mongo_timeout_ms: int) -> None:
        self._redis = redis
        self._events = events
        self._mongo_timeout_ms = mongo_timeout_ms

    async def sites(self) -> tuple[list[str], str]:
        try:
            intact = await Markers(self._redis).holds(intact_key())
            members = await self._redis.smembers(sites_key()) if intact else set()
            if members:
                return sorted(m.decode() if isinstance(m, bytes) else str(m)
                              for m in members), "redis"
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable_falling_back", extra={"fields": {
                "error": repr(exc)}})
        try:
            cursor = await self._events.aggregate([{"$group": {"_id": "$site_id"}}],
                                                  maxTimeMS=self._mongo_timeout_ms)
            found = [doc["_id"] async for doc in cursor]
        except PyMongoError as exc:
            log.warning("mongo_unavailable", extra={"fields": {"error": repr(exc)}})
            raise Unavailable("neither Redis nor MongoDB could answer") from exc
        return sorted(str(s) for s in found), "mongo"


class FixedSites:
    """A directory of a given list: for an app built with injected readers (app tests)."""

    def __init__(self, site_ids: Sequence[str] = (), source: str = "redis") -> None:
        self._sites = sorted(site_ids)
        self._source = source

    async def sites(self) -> tuple[list[str], str]:
        return list(self._sites), self._source


SITES = web.AppKey("sites", SiteLister)
