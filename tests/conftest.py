"""Fixtures shared by the integration and end-to-end tiers (unit tests use none of them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from contracts.mongo import DATABASE as MONGO_DATABASE
from contracts.mongo import EVENTS
from contracts.redis_client import RedisClient, connect_redis_client
from tests.stack import SitePool, Stack, drop_database, private_stack, wait_until_aggregates_intact


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``runs_first`` run before the rest, in their own order. The one that
    flushes Redis asks the stack's query API to answer from MongoDB meanwhile, and FerretDB
    scans the whole events collection for that: it must run before the other tests have
    filled the collection with hundreds of thousands of events."""
    items.sort(key=lambda item: item.get_closest_marker("runs_first") is None)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's private stack (tests/stack.py), never the user's."""
    with private_stack() as found:
        wait_until_aggregates_intact(found)
        yield found


@pytest.fixture(scope="session")
def site_pool(stack: Stack) -> SitePool:
    return SitePool(stack)


@pytest.fixture
def site_id(site_pool: SitePool) -> str:
    """A fresh site per test, registered in the stack's site registry (the gateways refuse
    unknown sites), so tests share a running stack without seeing each other."""
    return site_pool.take()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    """Sends the stack's admin token with every request (stats need one; the gateways and
    the services' own probes ignore it)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers=stack.auth()) as session:
        yield session


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[RedisClient]:
    """The stack's Redis as the services see it: one server or a cluster (make test-cluster)."""
    client = connect_redis_client(stack.redis_url, timeout_s=5.0)
    yield client
    await client.aclose()


@pytest.fixture
async def mongo_events(stack: Stack) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    yield client[MONGO_DATABASE][EVENTS]
    await client.close()


@pytest.fixture
async def scratch_db(stack: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A database of its own on the stack's MongoDB server, dropped afterwards."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    db = client[f"scratch_{uuid.uuid4().hex[:12]}"]
    yield db
    await drop_database(client, db.name)
    await client.close()
