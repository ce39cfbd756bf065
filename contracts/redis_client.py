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


def cluster_startup(url: str) -> tuple[list[tuple[str, int]], str | None, str | None] | None:
    """The nodes, username and password of a ``redis+cluster://`` URL; None for one
    server's URL. (The synchronous callers, tests and CI tools, build their own client.)"""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return None
    nodes = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, colon, port = address.rpartition(":")
        if not colon:  # a host alone: the default port
            host, port = address, ""
        nodes.append((host or "127.0.0.1", int(port or 6379)))
    return (nodes, unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


def connect_redis_client(url: str, timeout_s: float = 2.0) -> RedisClient:
    """What the services call with ``REDIS_URL``: a cluster client for a
    ``redis+cluster://`` URL (it connects at its first command), else ``connect_redis``."""
    cluster = cluster_startup(url)
    if cluster is None:
        return connect_redis(url, timeout_s)
    nodes, username, password = cluster
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                        username=username, password=password,
                        socket_timeout=timeout_s, socket_connect_timeout=1.0,
                        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
