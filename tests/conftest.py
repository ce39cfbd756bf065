"""Fixtures shared by the integration and end-to-end tiers (unit tests use none of them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.stack import Stack, find_or_start, stack_cli


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    found, started_here = find_or_start()
    yield found
    if started_here:
        stack_cli("down")


@pytest.fixture
def site_id() -> str:
    """A fresh site per test, so tests share a running stack without seeing each other."""
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
