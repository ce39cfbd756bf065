"""Pseudonymising visitor ids before anything stores them.

The gateway replaces each event's ``user_id`` with a keyed hash (HMAC-SHA256 with a secret
only the gateways hold) before it publishes to Kafka, so the topic, the dead-letter topic,
MongoDB and Redis never hold the raw value. The same id always hashes the same, so unique
visitor counts stay exact; without the key the hash cannot be reversed by trying likely ids.
The hash is truncated to 128 bits (32 hex characters): collisions are negligible at any
visitor count a site could have (about 1 in 10^20 for a billion visitors).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import replace

from contracts.event import PageView

HASH_HEX_CHARS = 32
MIN_KEY_CHARS = 16


def user_id_hasher(key: str) -> Callable[[str], str]:
    """ValueError for a key too short to be a secret."""
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"USER_ID_HASH_KEY must be at least {MIN_KEY_CHARS} characters")
    secret = key.encode()

    def pseudonym(user_id: str) -> str:
        digest = hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()
        return digest[:HASH_HEX_CHARS]

    return pseudonym


def pseudonymise(events: Sequence[PageView], pseudonym: Callable[[str], str]
                 ) -> list[PageView]:
    return [replace(e, user_id=pseudonym(e.user_id)) for e in events]
