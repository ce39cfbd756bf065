"""Markers that speak for all of Redis: on a Redis Cluster, one copy on every master.

Why: a marker such as ``intact_key()`` ("every aggregate is here") lives in one slot
(``{!meta}``), so on a cluster it sits on one master. A master restarted empty or flushed
loses the aggregates of its sites, while the marker on another master stays: the loss would
go unnoticed and the query API would answer zeros from Redis. So every marker is also kept
on each master, under a hash tag (``{!m<n>}``) chosen so its slot is served there; the
marker holds only while every copy exists. On one Redis server a marker is its one key, as
before.

A resharding that moves a copy's slot to another master leaves some master without one:
that reads as a loss, and the aggregators rebuild, which is safe (and rare).
"""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from contracts.keys import PREFIX
from contracts.redis_client import RedisClient

MASTER_TAG = "!m"


def master_copy(name: str, n: int) -> str:
    """The ``n``-th candidate name of a per-master copy of the ``{!meta}`` key ``name``."""
    _, _, rest = name.partition("}")
    return f"{PREFIX}:{{{MASTER_TAG}{n}}}{rest}"


class Markers:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def copies(self, name: str) -> list[str]:
        """``name`` and, on a cluster, one copy for each master (found by trying candidate
        tags in order until every master has one: the same names in every process)."""
        redis = self._redis
        if not isinstance(redis, RedisCluster):
            return [name]
        await redis.initialize()
        masters = {node.name for node in redis.get_primaries()}
        chosen: dict[str, str] = {}
        n = 0
        while len(chosen) < len(masters):
            candidate = master_copy(name, n)
            node = redis.get_node_from_key(candidate)  # raises when a slot is not covered
            if node is not None:
                chosen.setdefault(node.name, candidate)
            n += 1
        return [name, *sorted(chosen.values())]

    async def holds(self, name: str) -> bool:
        """Whether the marker and each master's copy exist."""
        found = await asyncio.gather(*(self._redis.exists(key)
                                       for key in await self.copies(name)))
        return all(found)

    async def set_copies(self, name: str, value: str) -> None:
        """Set each master's copy, not ``name`` itself (whoever sets it may need to do so in
        a script of its own slot, last)."""
        copies = (await self.copies(name))[1:]
        await asyncio.gather(*(self._redis.set(key, value) for key in copies))

    async def set(self, name: str, value: str) -> None:
        """Set ``name`` and every copy."""
        await asyncio.gather(*(self._redis.set(key, value)
                               for key in await self.copies(name)))

    async def delete(self, name: str) -> None:
        """Delete ``name`` and every copy (one key a command: they are in different slots)."""
        await asyncio.gather(*(self._redis.delete(key) for key in await self.copies(name)))
