"""The daily salt of cookieless visitor ids on the real Redis: shared by every gateway,
deleted 48 hours after its day starts, and a past day's salt already gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from contracts.keys import salt_key
from contracts.redis_client import RedisClient, connect_redis_client
from ingest_gateway.visitor import DAY_MS, SaltStore, day_of
from tests.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[RedisClient]:
    redis = connect_redis_client(stack.redis_url)
    yield redis
    await redis.aclose()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_gateways_share_todays_salt_which_expires_48_hours_after_its_day_starts(
        client: RedisClient) -> None:
    first, second = SaltStore(client, now_ms), SaltStore(client, now_ms)
    assert await first.today() == await second.today()
    today = day_of(now_ms())
    assert 0 < await client.pttl(salt_key(today)) <= 48 * 3_600_000


async def test_a_new_salt_expires_at_the_end_of_the_next_day(client: RedisClient) -> None:
    # A day no gateway has fetched yet (they fetch at most tomorrow's), created here.
    later = now_ms() + 2 * DAY_MS
    key = salt_key(day_of(later))
    await client.delete(key)
    try:
        await SaltStore(client, lambda: later).today()
        expected_ms = (day_of(later) + 2) * DAY_MS - now_ms()
        assert abs(await client.pttl(key) - expected_ms) < 60_000
    finally:
        await client.delete(key)


async def test_the_salt_of_two_days_ago_is_never_kept(client: RedisClient) -> None:
    two_days_ago = now_ms() - 2 * DAY_MS
    await client.delete(salt_key(day_of(two_days_ago)))  # what a broken run could leave
    store = SaltStore(client, lambda: two_days_ago)
    assert len(await store.today()) == 32  # usable for that moment, but not stored
    assert await client.exists(salt_key(day_of(two_days_ago))) == 0
