"""Which sites a deployment serves and which stats tokens may read which of them.

Two MongoDB collections in the events database hold the facts, managed with
``python -m admin`` (``make sites``, ``make tokens``):

- ``sites``: one document per served site, ``_id`` = the site id, with its page quota
  (``max_pages``), its ingestion rate limit (``max_events_per_s`` and ``burst_events``, a
  token bucket in each gateway process: ``ingest_gateway.site_limits``) and the origins its
  pages are served from (``origins``). Unknown sites are refused by every gateway (403
  ``site_not_allowed``). A site fed by Umami's tracker names its Umami website id
  (``umami_website``, a lowercase UUID, unique across sites): Umami's ``/api/send`` names
  the website, not the site.
  A hot site's aggregates are split over ``shards`` Redis units (``contracts.keys.
  unit_of``; only ever raised: each unit keeps what it counted).
- ``tokens``: one document per stats token, ``_id`` = a short random id that names it in
  ``list`` and ``revoke``, ``sha256`` = the hex SHA-256 of the token (the token itself is
  never stored: it is printed once, when created), and either ``admin: true`` (every site)
  or ``sites``: the site ids it may read.

This module is the pure part: names, document shapes, hashing and the immutable
``Registry`` snapshot the services consult per request. ``contracts.registry`` keeps a
snapshot fresh in each process.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.event import MAX_SHARDS, SITE_ID_RE

SITES = "sites"
TOKENS = "tokens"
DEFAULT_MAX_PAGES = 10_000  # distinct page ids a site may count (enforced elsewhere)
# Events/s one gateway process admits for a site (a token bucket; the burst defaults to one
# second of it). Several times what the benchmarks send to one site per gateway here
# (bench-ingest's peak: 13,400 events/s over 3 gateways), so only a runaway or hostile
# sender meets it; set a site's own with ``python -m admin sites set SITE --max-events-per-s``.
DEFAULT_MAX_EVENTS_PER_S = 20_000
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
TOKEN_BYTES = 32  # 256 random bits, URL-safe base64: 43 characters
# Every process re-reads the registry every 2 s (``contracts.registry.REFRESH_S``): a raised
# shard count is stamped on events only this long after it was stored, once every query API
# reads the new units too.
SHARDS_SETTLE_MS = 10_000
UMAMI_WEBSITE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    max_pages: int = DEFAULT_MAX_PAGES
    origins: tuple[str, ...] = ()
    max_events_per_s: int = DEFAULT_MAX_EVENTS_PER_S
    burst_events: int | None = None  # None: one second's worth of max_events_per_s
    umami_website: str | None = None  # Umami's website id (lowercase UUID) for this site
    shards: int = 1  # units its aggregates are split over (``contracts.keys.unit_of``)
    shards_from: int = 1  # the count before it was last raised
    shards_raised_ms: int = 0  # when (epoch ms)

    def shards_to_stamp(self, now_ms: int) -> int:
        """The count a gateway stamps on the site's events (``PageView.shards``): a raised
        count only once every query API has surely read it (``SHARDS_SETTLE_MS``), so
        none ever misses a unit that holds events."""
        return self.shards if now_ms >= self.shards_raised_ms + SHARDS_SETTLE_MS \
            else self.shards_from

    @property
    def burst(self) -> int:
        """Events a gateway admits at once after the site was quiet."""
        return self.burst_events or self.max_events_per_s


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token may read: every site (``admin``) or the listed ones."""

    token_id: str
    digest: str  # hex SHA-256 of the token
    sites: frozenset[str] = frozenset()
    admin: bool = False

    def allows(self, site_id: str) -> bool:
        return self.admin or site_id in self.sites


@dataclass(frozen=True, slots=True)
class Registry:
    """One consistent snapshot of both collections; never mutated, replaced whole."""

    sites: Mapping[str, Site]
    grants: Mapping[str, Grant]  # by the token's SHA-256 hex digest
    # Site ids by Umami website id, built once per snapshot (a per-request scan would cost
    # O(sites)). When two documents claim one website the first site id in order wins.
    _umami: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        umami: dict[str, str] = {}
        for site_id in sorted(self.sites):
            website = self.sites[site_id].umami_website
            if website is not None:
                umami.setdefault(website, site_id)
        object.__setattr__(self, "_umami", umami)

    def serves(self, site_id: str) -> bool:
        return site_id in self.sites

    def site_of_umami(self, website: str) -> str | None:
        """The site an Umami website id is mapped to; the id is matched in lowercase."""
        return self._umami.get(website.lower()) if isinstance(website, str) else None

    def grant_for(self, token: bytes) -> Grant | None:
        """The grant of a presented token, or None. The token is hashed and its digest
        looked up (timing can at most reveal something about a digest, which does not give
        the token back); the stored digest is then compared in constant time."""
        if not token:
            return None
        digest = token_digest(token)
        grant = self.grants.get(digest)
        if grant is None or not hmac.compare_digest(grant.digest, digest):
            return None
        return grant


EMPTY = Registry(sites={}, grants={})


def token_digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_token_id() -> str:
    return secrets.token_hex(6)


def valid_site_id(site_id: str) -> bool:
    return SITE_ID_RE.fullmatch(site_id) is not None


def valid_umami_website(website: str) -> bool:
    return UMAMI_WEBSITE.fullmatch(website) is not None


def site_document(site: Site, now: datetime | None = None) -> dict[str, Any]:
    return {"_id": site.site_id, "max_pages": site.max_pages, "origins": list(site.origins),
            "max_events_per_s": site.max_events_per_s, "burst_events": site.burst_events,
            "umami_website": site.umami_website, "created_at": now or datetime.now(UTC)}


def shard_fields(now: Site | None, asked: int, now_ms: int) -> dict[str, int]:
    """What raising a site's shard count to ``asked`` stores (nothing when it is already
    there); ValueError when ``asked`` is lower: a unit dropped would still hold counts
    nobody reads."""
    current = 1 if now is None else now.shards
    if asked < current:
        raise ValueError(f"site is split over {current} shards; the count can only grow "
                         f"(asked for {asked})")
    if asked == current:
        return {}
    return {"shards": asked, "shards_from": current, "shards_raised_ms": now_ms}


def _positive(value: Any) -> int | None:
    """A stored limit, or None when it is missing or not a positive integer (then the
    default applies: a document written by hand must not switch a limit off or stop a
    gateway)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def token_document(token_id: str, token: str, sites: Iterable[str] = (), admin: bool = False,
                   now: datetime | None = None) -> dict[str, Any]:
    """The stored form of a token: its hash, never the token."""
    return {"_id": token_id, "sha256": token_digest(token.encode()), "admin": admin,
            "sites": sorted(set(sites)), "created_at": now or datetime.now(UTC)}


def site_of(doc: Mapping[str, Any]) -> Site | None:
    """A stored site document, or None when it is malformed (skipped, never fatal)."""
    site_id, max_pages = doc.get("_id"), doc.get("max_pages", DEFAULT_MAX_PAGES)
    origins = doc.get("origins") or []
    if not isinstance(site_id, str) or not valid_site_id(site_id):
        return None
    if not isinstance(max_pages, int) or max_pages < 1:
        max_pages = DEFAULT_MAX_PAGES
    website = doc.get("umami_website")
    return Site(site_id, max_pages, tuple(o for o in origins if isinstance(o, str)),
                max_events_per_s=_positive(doc.get("max_events_per_s"))
                or DEFAULT_MAX_EVENTS_PER_S,
                burst_events=_positive(doc.get("burst_events")),
                umami_website=website.lower() if isinstance(website, str)
                and valid_umami_website(website.lower()) else None,
                shards=min(_positive(doc.get("shards")) or 1, MAX_SHARDS),
                shards_from=min(_positive(doc.get("shards_from")) or 1, MAX_SHARDS),
                shards_raised_ms=_positive(doc.get("shards_raised_ms")) or 0)


def grant_of(doc: Mapping[str, Any]) -> tuple[str, Grant] | None:
    """(digest, grant) of a stored token document, or None when it is malformed."""
    digest, token_id = doc.get("sha256"), doc.get("_id")
    if not isinstance(digest, str) or len(digest) != 64 or not isinstance(token_id, str):
        return None
    sites = frozenset(s for s in doc.get("sites") or [] if isinstance(s, str))
    return digest, Grant(token_id, digest, sites, admin=doc.get("admin") is True)


def registry_of(site_docs: Iterable[Mapping[str, Any]],
                token_docs: Iterable[Mapping[str, Any]]) -> Registry:
    sites = {s.site_id: s for s in map(site_of, site_docs) if s is not None}
    grants = dict(g for g in map(grant_of, token_docs) if g is not None)
    return Registry(sites=sites, grants=grants)
