"""The admin commands' reads and writes of the ``sites`` and ``tokens`` collections.

Called by ``admin.__main__`` (and the tests); every method may block on MongoDB. Only
documents built by ``contracts.tenancy`` are written, so a token is stored as its SHA-256
and nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from contracts.event import DEFAULT_SITE
from contracts.tenancy import (
    SITES,
    TOKENS,
    Site,
    new_token,
    new_token_id,
    shard_fields,
    site_document,
    site_of,
    token_digest,
    token_document,
)

TIMEOUT_MS = 5_000


class UnknownSites(ValueError):
    def __init__(self, sites: list[str]) -> None:
        super().__init__(", ".join(sites))
        self.sites = sites


class WebsiteTaken(ValueError):
    def __init__(self, website: str, site_id: str) -> None:
        super().__init__(f"Umami website {website} is already mapped to site {site_id!r}")


class ShardsLowered(ValueError):
    """A site's shard count only grows (``contracts.tenancy.shard_fields``)."""


class AdminStore:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self._client = client
        self._db = client[database]

    @classmethod
    def connect(cls, mongo_url: str, database: str) -> AdminStore:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_url, serverSelectionTimeoutMS=TIMEOUT_MS, connectTimeoutMS=TIMEOUT_MS)
        return cls(client, database)

    async def close(self) -> None:
        await self._client.close()

    async def _check_website_free(self, site_id: str, website: object) -> None:
        """An Umami website id names one site: WebsiteTaken when another site has it."""
        if website is None:
            return
        other = await self._db[SITES].find_one({"umami_website": website,
                                                "_id": {"$ne": site_id}})
        if other is not None:
            raise WebsiteTaken(str(website), str(other["_id"]))

    async def _shard_fields(self, site_id: str, asked: int) -> dict[str, int]:
        found = await self._db[SITES].find_one({"_id": site_id})
        try:
            return shard_fields(None if found is None else site_of(found), asked,
                                int(time.time() * 1000))
        except ValueError as exc:
            raise ShardsLowered(f"{site_id}: {exc}") from None

    async def add_site(self, site: Site) -> dict[str, Any]:
        """Register a site, or replace the settings of a registered one (its creation time
        and a shard count above the one given stay)."""
        await self._check_website_free(site.site_id, site.umami_website)
        doc = site_document(site)
        with contextlib.suppress(ShardsLowered):  # ``add`` keeps a higher count
            doc |= await self._shard_fields(site.site_id, site.shards)
        created = doc.pop("created_at")
        await self._db[SITES].update_one({"_id": site.site_id},
                                         {"$set": {k: v for k, v in doc.items() if k != "_id"},
                                          "$setOnInsert": {"created_at": created}},
                                         upsert=True)
        found = await self._db[SITES].find_one({"_id": site.site_id})
        assert found is not None
        return found

    async def set_site(self, site_id: str, changes: Mapping[str, int | str]
                       ) -> dict[str, Any] | None:
        """Change some settings of a registered site (``contracts.tenancy.site_document``'s
        field names); None when there is no such site."""
        await self._check_website_free(site_id, changes.get("umami_website"))
        shards = changes.get("shards")
        if isinstance(shards, int):
            changes = {k: v for k, v in changes.items() if k != "shards"}
            changes |= await self._shard_fields(site_id, shards)
        if changes:  # (none left when the shard count is already the one asked for)
            result = await self._db[SITES].update_one({"_id": site_id}, {"$set": changes})
            if result.matched_count == 0:
                return None
        return await self._db[SITES].find_one({"_id": site_id})

    async def sites(self) -> list[dict[str, Any]]:
        return await self._db[SITES].find({}).sort("_id", 1).to_list()

    async def remove_site(self, site_id: str) -> bool:
        return (await self._db[SITES].delete_one({"_id": site_id})).deleted_count == 1

    async def add_token(self, sites: Iterable[str], admin: bool = False,
                        token: str | None = None) -> tuple[str, str]:
        """A new token for these sites (or every site): (id, token). The token is returned
        here only; the store keeps its hash."""
        wanted = sorted(set(sites))
        if not admin:
            known = {d["_id"] async for d in self._db[SITES].find(
                {"_id": {"$in": wanted}}, projection={"_id": 1})}
            if missing := [s for s in wanted if s not in known]:
                raise UnknownSites(missing)
        token = token or new_token()
        while True:
            token_id = new_token_id()
            try:
                await self._db[TOKENS].insert_one(token_document(token_id, token, wanted, admin))
                return token_id, token
            except DuplicateKeyError:  # an id collision: 48 random bits, practically never
                continue

    async def tokens(self) -> list[dict[str, Any]]:
        return await self._db[TOKENS].find({}, projection={"sha256": 0}).sort(
            "created_at", 1).to_list()

    async def revoke_token(self, token_id: str) -> bool:
        return (await self._db[TOKENS].delete_one({"_id": token_id})).deleted_count == 1

    async def init(self, admin_token: str | None) -> dict[str, Any]:
        """Register ``default`` (if missing) and make sure an admin token exists: the given
        one (stored once, by hash), or, without one, a new one if there is no admin token
        yet. Returns ``{"site": ..., "token": <new token or null>, "token_id": ...}``."""
        if await self._db[SITES].find_one({"_id": DEFAULT_SITE}) is None:
            await self.add_site(Site(DEFAULT_SITE))
        if admin_token is not None:
            found = await self._db[TOKENS].find_one(
                {"sha256": token_digest(admin_token.encode())})
            if found is not None:
                return {"site": DEFAULT_SITE, "token": None, "token_id": found["_id"]}
            token_id, _ = await self.add_token((), admin=True, token=admin_token)
            return {"site": DEFAULT_SITE, "token": None, "token_id": token_id}
        existing = await self._db[TOKENS].find_one({"admin": True})
        if existing is not None:
            return {"site": DEFAULT_SITE, "token": None, "token_id": existing["_id"]}
        token_id, token = await self.add_token((), admin=True)
        return {"site": DEFAULT_SITE, "token": token, "token_id": token_id}
