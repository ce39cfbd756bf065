"""Cookieless visitor ids and the shared daily salt, on a fake clock and a fake Redis."""

from __future__ import annotations

import itertools
from typing import cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.keys import salt_key
from contracts.redis_client import RedisClient
from ingest_gateway.client_address import address_of, trusted_networks
from ingest_gateway.visitor import (
    DAY_MS,
    SaltStore,
    SaltUnavailable,
    expiry_of,
    visitor_id,
)

DAY = 20_420  # 2025-11-28, UTC days since the epoch
NOON = DAY * DAY_MS + 12 * 3_600_000
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36"


class FakeRedis:
    """SET NX EXAT and GET, and a switch to be unreachable."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.expiry: dict[str, int] = {}
        self.down = False
        self.calls = 0

    async def set(self, name: str, value: bytes, *, nx: bool = False,
                  exat: int | None = None) -> bool | None:
        self._call()
        if nx and name in self.values:
            return None
        self.values[name] = value
        if exat is not None:
            self.expiry[name] = exat
        return True

    async def get(self, name: str) -> bytes | None:
        self._call()
        return self.values.get(name)

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("down")


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def store(redis: FakeRedis, clock: Clock) -> SaltStore:
    counter = itertools.count()
    return SaltStore(cast(RedisClient, redis), clock,
                     new_salt=lambda: f"salt-{next(counter)}".encode().ljust(32, b"."))


def test_the_same_address_and_user_agent_on_one_site_is_one_visitor() -> None:
    salt = b"s" * 32
    assert visitor_id(salt, "shop", "127.0.0.77", UA) == visitor_id(salt, "shop", "127.0.0.77", UA)
    assert len(visitor_id(salt, "shop", "127.0.0.77", UA)) == 32


@pytest.mark.parametrize("other", [("blog", "127.0.0.77", UA), ("shop", "127.0.0.78", UA),
                                   ("shop", "127.0.0.77", UA + " Edg/1")])
def test_another_site_address_or_user_agent_is_another_visitor(other: tuple[str, str, str]
                                                               ) -> None:
    salt = b"s" * 32
    assert visitor_id(salt, "shop", "127.0.0.77", UA) != visitor_id(salt, *other)


def test_the_id_does_not_contain_the_address() -> None:
    assert "127.0.0.77" not in visitor_id(b"s" * 32, "shop", "127.0.0.77", UA)


async def test_one_day_gives_one_id_and_the_next_day_another() -> None:
    redis, clock = FakeRedis(), Clock(DAY * DAY_MS + 1000)
    salts = store(redis, clock)
    morning = visitor_id(await salts.today(), "shop", "127.0.0.77", UA)
    clock.ms = DAY * DAY_MS + DAY_MS - 1
    assert visitor_id(await salts.today(), "shop", "127.0.0.77", UA) == morning
    clock.ms = (DAY + 1) * DAY_MS
    assert visitor_id(await salts.today(), "shop", "127.0.0.77", UA) != morning


async def test_the_salt_expires_at_the_end_of_the_next_day_48_hours_after_its_day_starts(
        ) -> None:
    redis = FakeRedis()
    await store(redis, Clock(DAY * DAY_MS)).today()
    assert redis.expiry[salt_key(DAY)] == expiry_of(DAY) == (DAY * DAY_MS + 2 * DAY_MS) // 1000


async def test_all_gateways_share_the_first_salt_written() -> None:
    redis, clock = FakeRedis(), Clock(NOON)
    first, second = store(redis, clock), store(redis, clock)
    assert await first.today() == await second.today()


async def test_a_cached_salt_needs_no_redis_and_redis_down_without_one_is_unavailable() -> None:
    redis, clock = FakeRedis(), Clock(DAY * DAY_MS)
    salts = store(redis, clock)
    cached = await salts.today()
    redis.down = True
    assert await salts.today() == cached
    clock.ms += DAY_MS  # a new day, nothing fetched ahead
    with pytest.raises(SaltUnavailable):
        await salts.today()


async def test_after_redis_failed_requests_are_refused_at_once_for_a_second(
        ) -> None:
    redis, clock = FakeRedis(), Clock(DAY * DAY_MS)
    salts = store(redis, clock)
    redis.down = True
    for _ in range(5):
        with pytest.raises(SaltUnavailable):
            await salts.today()
    assert redis.calls == 1  # the later ones did not wait for Redis
    redis.down = False
    clock.ms += 1_000
    assert len(await salts.today()) == 32


async def test_tomorrows_salt_is_fetched_after_noon_so_midnight_needs_no_redis() -> None:
    redis, clock = FakeRedis(), Clock(NOON)
    salts = store(redis, clock)
    await salts.refresh()
    tomorrow = redis.values[salt_key(DAY + 1)]
    redis.down = True
    clock.ms = (DAY + 1) * DAY_MS + 5
    assert await salts.today() == tomorrow


async def test_a_salt_redis_lost_is_written_back_not_replaced() -> None:
    redis, clock = FakeRedis(), Clock(DAY * DAY_MS)
    salts = store(redis, clock)
    cached = await salts.today()
    redis.values.clear()  # a flush
    await salts.refresh()
    assert redis.values[salt_key(DAY)] == cached


async def test_a_salt_another_gateway_recreated_is_followed() -> None:
    redis, clock = FakeRedis(), Clock(DAY * DAY_MS)
    salts = store(redis, clock)
    await salts.today()
    redis.values[salt_key(DAY)] = b"n" * 32
    await salts.refresh()
    assert await salts.today() == b"n" * 32


def test_x_real_ip_is_believed_only_from_a_trusted_proxy() -> None:
    trusted = trusted_networks(["127.0.0.1", "::1", "172.16.0.0/12"])
    assert address_of("127.0.0.1", "203.0.113.9", trusted) == "203.0.113.9"
    assert address_of("172.18.0.5", "203.0.113.9", trusted) == "203.0.113.9"
    assert address_of("127.0.0.77", "203.0.113.9", trusted) == "127.0.0.77"
    assert address_of("127.0.0.1", None, trusted) == "127.0.0.1"
    assert address_of(None, "203.0.113.9", trusted) == ""


