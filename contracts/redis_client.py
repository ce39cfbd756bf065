"""How every service connects to Redis: short timeouts, and one retry on a fresh connection
when a pooled one turns out dead (after a Redis restart), so a restart costs no request."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect_redis(url: str, timeout_s: float = 2.0) -> Redis:
    """A client (connections are opened lazily; nothing happens at call time)."""
    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=1.0,
                          retry=Retry(NoBackoff(), 1),
                          retry_on_error=[RedisConnectionError])
