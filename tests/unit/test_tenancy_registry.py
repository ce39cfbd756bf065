"""The site registry and token grants (contracts.tenancy) and their cached reader
(contracts.registry), with an in-memory stand-in for the two MongoDB collections."""

from __future__ import annotations

from typing import Any

from pymongo.errors import ServerSelectionTimeoutError

from contracts.registry import RegistryCache
from contracts.tenancy import (
    SITES,
    TOKENS,
    Site,
    new_token,
    registry_of,
    site_document,
    token_digest,
    token_document,
)


class Cursor:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self._docs = docs

    async def to_list(self) -> list[dict[str, Any]]:
        return list(self._docs)


class Collection:
    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self.down = False

    def find(self, *_: Any, **__: Any) -> Cursor:
        if self.down:
            raise ServerSelectionTimeoutError("MongoDB is down")
        return Cursor(self.docs)


class Database(dict[str, Collection]):
    def __init__(self) -> None:
        super().__init__({SITES: Collection(), TOKENS: Collection()})

    def down(self, down: bool) -> None:
        for collection in self.values():
            collection.down = down


async def test_nothing_is_served_before_the_first_read_and_everything_after_it() -> None:
    db = Database()
    db[SITES].docs.append(site_document(Site("shop")))
    cache = RegistryCache()
    assert not cache.loaded and not cache.current().serves("shop")
    assert await cache.refresh(db)  # type: ignore[arg-type]
    assert cache.loaded and cache.current().serves("shop")
    assert not cache.current().serves("blog")


async def test_a_failed_refresh_keeps_the_last_known_registry() -> None:
    db = Database()
    db[SITES].docs.append(site_document(Site("shop")))
    db[TOKENS].docs.append(token_document("t1", "secret", ["shop"]))
    cache = RegistryCache()
    await cache.refresh(db)  # type: ignore[arg-type]
    db.down(True)
    assert not await cache.refresh(db)  # type: ignore[arg-type]
    assert cache.loaded and cache.current().serves("shop")
    assert cache.current().grant_for(b"secret") is not None
    db.down(False)
    db[SITES].docs.clear()
    assert await cache.refresh(db)  # type: ignore[arg-type]
    assert not cache.current().serves("shop")  # a removal counts once MongoDB answers


async def test_a_failed_first_read_leaves_the_cache_unloaded() -> None:
    db = Database()
    db.down(True)
    cache = RegistryCache()
    assert not await cache.refresh(db)  # type: ignore[arg-type]
    assert not cache.loaded


def test_a_token_is_stored_as_its_sha256_only() -> None:
    token = new_token()
    doc = token_document("t1", token, ["shop", "blog", "shop"])
    assert token not in repr(doc)
    assert doc["sha256"] == token_digest(token.encode()) and doc["sites"] == ["blog", "shop"]
    assert len(token) >= 40 and new_token() != token


def test_grants_name_their_sites_or_every_site_for_admin() -> None:
    registry = registry_of([], [token_document("a", "site-token", ["shop"]),
                                token_document("b", "root-token", admin=True)])
    scoped = registry.grant_for(b"site-token")
    assert scoped is not None and scoped.token_id == "a"
    assert scoped.allows("shop") and not scoped.allows("blog")
    admin = registry.grant_for(b"root-token")
    assert admin is not None and admin.allows("blog") and admin.allows("anything")
    for wrong in (b"", b"site-toke", b"site-token ", b"ROOT-TOKEN"):
        assert registry.grant_for(wrong) is None, wrong


def test_malformed_documents_are_skipped_not_fatal() -> None:
    registry = registry_of(
        [{"_id": "ok"}, {"_id": "bad site!"}, {"_id": 7}, {"_id": "q", "max_pages": -3}],
        [{"_id": "x", "sha256": "short"}, {"sha256": "0" * 64},
         {"_id": "y", "sha256": token_digest(b"t"), "sites": ["ok", 5]}])
    assert sorted(registry.sites) == ["ok", "q"]
    assert registry.sites["q"].max_pages > 0
    grant = registry.grant_for(b"t")
    assert grant is not None and grant.sites == {"ok"} and not grant.admin


WEBSITE = "50429a93-8479-4073-be80-d5d29c09c2ec"


def test_a_site_maps_its_umami_website_in_lowercase_and_round_trips() -> None:
    doc = site_document(Site("shop", umami_website=WEBSITE))
    registry = registry_of([doc, site_document(Site("blog"))], [])
    assert registry.sites["shop"].umami_website == WEBSITE
    assert registry.site_of_umami(WEBSITE.upper()) == "shop"
    assert registry.site_of_umami("11111111-2222-4333-8444-555555555555") is None


def test_a_malformed_stored_umami_website_is_ignored_and_a_duplicate_goes_to_the_first_site(
        ) -> None:
    registry = registry_of([{"_id": "a", "umami_website": "not-a-uuid"},
                            {"_id": "c", "umami_website": WEBSITE},
                            {"_id": "b", "umami_website": WEBSITE.upper()}], [])
    assert registry.sites["a"].umami_website is None
    assert registry.site_of_umami(WEBSITE) == "b"
