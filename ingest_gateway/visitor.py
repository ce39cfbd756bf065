"""Cookieless visitor ids and the daily salt every gateway shares.

Trackers send no visitor id. As Plausible does, the gateway derives one: a keyed hash of the
site, the client address and the User-Agent, keyed with a random salt of the UTC day the
request was received. The salt lives only in Redis and in the gateways' memory and Redis
deletes it 48 h after its day starts, so afterwards nobody, the operator included, can
link an id to an address or one day's visitor to another's. The address and the User-Agent
go into the hash and nowhere else.

Who calls what: the routes call ``SaltStore.today`` per request (no Redis round trip once
the day's salt is cached); ``SaltStore.run`` refreshes in the background and fetches
tomorrow's salt ahead, so midnight needs no Redis. If Redis cannot be reached and today's
salt is not cached, ``today`` raises ``SaltUnavailable`` (the route answers 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable

from redis.exceptions import RedisError

from contracts.keys import salt_key
from contracts.redis_client import RedisClient

DAY_MS = 86_400_000
SALT_BYTES = 32
VISITOR_DIGEST_BYTES = 16  # 32 hex characters, as long as a pseudonymised user id
PREFETCH_AFTER_MS = 12 * 3_600_000  # from noon UTC, tomorrow's salt is fetched ahead
REFRESH_S = 60.0
# After Redis failed to give today's salt, requests are refused at once for this long rather
# than each waiting out its own connection timeout behind the lock.
FAIL_FAST_MS = 1_000

log = logging.getLogger(__name__)


def visitor_id(salt: bytes, site_id: str, address: str, user_agent: str) -> str:
    """Keyed BLAKE2b (a MAC) of site, address and User-Agent, separated by a byte none of
    them holds unescaped in practice (ASCII unit separator)."""
    data = f"{site_id}\x1f{address}\x1f{user_agent}".encode(errors="replace")
    return hashlib.blake2b(data, key=salt, digest_size=VISITOR_DIGEST_BYTES).hexdigest()


def day_of(ms: int) -> int:
    """The UTC day (days since the epoch) of an instant in epoch milliseconds."""
    return ms // DAY_MS


def expiry_of(day: int) -> int:
    """When a day's salt is deleted (epoch seconds): the end of the next day, 48 h after
    the day starts."""
    return (day + 2) * 86_400


class SaltUnavailable(Exception):
    """Today's salt is not cached and Redis could not give it: cookieless events must wait."""


class SaltStore:
    """Today's (and from noon tomorrow's) salt, cached; Redis holds the shared truth."""

    def __init__(self, redis: RedisClient, clock_ms: Callable[[], int],
                 new_salt: Callable[[], bytes] = lambda: secrets.token_bytes(SALT_BYTES)
                 ) -> None:
        self._redis = redis
        self._clock_ms = clock_ms
        self._new_salt = new_salt
        self._salts: dict[int, bytes] = {}  # at most today's and tomorrow's
        self._lock = asyncio.Lock()
        self._failed_until_ms = 0

    async def today(self) -> bytes:
        """The salt of the current UTC day; SaltUnavailable when it cannot be had."""
        now = self._clock_ms()
        day = day_of(now)
        salt = self._salts.get(day)
        if salt is not None:
            return salt
        if now < self._failed_until_ms:
            raise SaltUnavailable("redis failed just now")
        async with self._lock:  # one Redis round trip for a burst of first requests
            salt = self._salts.get(day)
            if salt is None:
                if self._clock_ms() < self._failed_until_ms:  # failed while this one waited
                    raise SaltUnavailable("redis failed just now")
                try:
                    salt = await self._fetch(day)
                except RedisError as exc:
                    self._failed_until_ms = self._clock_ms() + FAIL_FAST_MS
                    raise SaltUnavailable(type(exc).__name__) from None
            return salt

    async def _fetch(self, day: int) -> bytes:
        """Create the day's salt unless a gateway already did (SET NX), then read the winner.
        A cached salt Redis lost (a flush, a restart without persistence) is written back
        rather than replaced, so gateways keep agreeing within the day."""
        candidate = self._salts.get(day) or self._new_salt()
        created = await self._redis.set(salt_key(day), candidate, nx=True, exat=expiry_of(day))
        salt = await self._redis.get(salt_key(day))
        if salt is None:  # expired between the two commands: only at its very end
            salt = candidate
        assert isinstance(salt, bytes)
        if created and day in self._salts:
            log.warning("salt_restored", extra={"fields": {"day": day}})
        elif day in self._salts and self._salts[day] != salt:
            # Another gateway minted a new one after Redis lost ours: follow Redis, so all
            # gateways agree again. That day's returning visitors may count twice.
            log.warning("salt_recreated", extra={"fields": {"day": day}})
        self._salts[day] = salt
        today = day_of(self._clock_ms())
        for old in [d for d in self._salts if d < today]:
            del self._salts[old]
        return salt

    async def refresh(self) -> None:
        """Check today's salt against Redis and fetch tomorrow's after noon; what the
        background loop runs (RedisError propagates)."""
        now = self._clock_ms()
        day = day_of(now)
        async with self._lock:
            await self._fetch(day)
            if now - day * DAY_MS >= PREFETCH_AFTER_MS:
                await self._fetch(day + 1)

    async def run(self, interval_s: float = REFRESH_S) -> None:
        """Refresh until cancelled; an unreachable Redis is logged and tried again."""
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                log.warning("salt_refresh_failed", extra={"fields": {"error": type(exc).__name__}})
            await asyncio.sleep(interval_s)
