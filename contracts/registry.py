"""A process's cached copy of the site registry and the stats tokens (``contracts.tenancy``).

Every gateway (which sites to accept) and every query API (which token reads which sites)
keeps one ``RegistryCache``: a background task re-reads both MongoDB collections every
``refresh_s`` (2 s by default), so ``make sites`` / ``make tokens`` changes take effect
within a few seconds without a restart, and a request never waits for MongoDB. When a
refresh fails (MongoDB briefly down or slow) the last known registry stays in force and the
failure is logged once; the next successful refresh replaces it. Until the first successful
read the cache holds nothing (``loaded`` is False): the gateway then answers 503 and the
query API 401, and both report it in ``/readyz``.

Who calls it: the services' app factories start ``run()`` in a cleanup context; request
handlers call ``current()`` (never blocks). ``refresh()`` may block up to the MongoDB
client's timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from contracts.tenancy import EMPTY as EMPTY_REGISTRY
from contracts.tenancy import SITES, TOKENS, Registry, registry_of

log = logging.getLogger(__name__)
REFRESH_S = 2.0
MONGO_TIMEOUT_MS = 2_000  # server selection and connect: a refresh fails fast when it is down
MAX_DOCUMENTS = 100_000  # a registry larger than this is a mistake, not a deployment


class RegistrySource(Protocol):
    """What request handlers read: the latest registry, without blocking."""

    @property
    def loaded(self) -> bool: ...

    def current(self) -> Registry: ...


class RegistryCache:
    """Built with the app (no I/O); ``run(database)`` is started in the app's cleanup
    context, where the MongoDB client is created."""

    def __init__(self, refresh_s: float = REFRESH_S, read_timeout_ms: int = 2_000) -> None:
        self._refresh_s = refresh_s
        self._timeout_ms = read_timeout_ms
        self._registry = EMPTY_REGISTRY
        self._loaded = False
        self._failing = False

    @property
    def loaded(self) -> bool:
        """True once one read succeeded (the registry may be stale since, never empty by
        mistake)."""
        return self._loaded

    def current(self) -> Registry:
        return self._registry

    async def refresh(self, database: AsyncDatabase[dict[str, Any]]) -> bool:
        """Read both collections; on failure keep the last registry. True if it was read."""
        try:
            sites = await database[SITES].find({}, limit=MAX_DOCUMENTS,
                                               max_time_ms=self._timeout_ms).to_list()
            tokens = await database[TOKENS].find({}, limit=MAX_DOCUMENTS,
                                                 max_time_ms=self._timeout_ms).to_list()
        except PyMongoError as exc:
            if not self._failing:
                log.warning("registry_refresh_failed", extra={"fields": {
                    "error": repr(exc), "kept": "last known registry" if self._loaded
                    else "nothing loaded yet"}})
            self._failing = True
            return False
        if self._failing:
            log.info("registry_refresh_recovered")
        self._failing = False
        self._registry = registry_of(sites, tokens)
        self._loaded = True
        return True

    async def run(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        """Refresh for ever, every ``refresh_s``; cancel to stop."""
        while True:
            await self.refresh(database)
            await asyncio.sleep(self._refresh_s)


def registry_context(cache: RegistryCache, mongo_url: str, database: str
                     ) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context: its own MongoDB client, one read before the app serves
    (so a healthy start never refuses a registered site), then the refresh loop."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_url, serverSelectionTimeoutMS=MONGO_TIMEOUT_MS,
            connectTimeoutMS=MONGO_TIMEOUT_MS)
        db = client[database]
        await cache.refresh(db)
        task = asyncio.create_task(cache.run(db), name="registry-refresh")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()

    return ctx


class FixedRegistry:
    """A registry that never changes: for app tests that build the app without MongoDB."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @property
    def loaded(self) -> bool:
        return True

    def current(self) -> Registry:
        return self._registry
