"""How every service connects to Redis: short timeouts, and one retry on a fresh connection
when a pooled one turns out dead (after a Redis restart), so a restart costs no request.

``REDIS_URL`` names one server (``redis://host:port/0``) or a Redis Cluster
(``redis+cluster://host:port,host:port,...``: any of its nodes; the client discovers the
rest). Every key of a site carries the site as a hash tag, so the services' scripts and
multi-key commands stay in one slot and the same code runs on either.
"""

from __future__ import annotations

from typing import TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEME = "redis+cluster"
RedisClient: TypeAlias = Redis | RedisCluster


def connect_redis(url: str, timeout_s: float = 2.0) -> Redis:
    """A client of one server (connections are opened lazily; nothing happens at call
    time)."""
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=1.0,
                          retry=Retry(NoBackoff(), 1),
                          retry_on_error=[RedisConnectionError])


def connect_redis_client(url: str, timeout_s: float = 2.0) -> RedisClient:
    """What the services call with ``REDIS_URL``: a cluster client for a
    ``redis+cluster://`` URL (it connects at its first command), else ``connect_redis``."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return connect_redis(url, timeout_s)
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return RedisCluster(startup_nodes=nodes,
                        username=unquote(parts.username) if parts.username else None,
                        password=unquote(parts.password) if parts.password else None,
                        socket_timeout=timeout_s, socket_connect_timeout=1.0,
                        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
