"""Page facts: each page's views and visitors in one bucket, packed into a field of a hash.

Why: a page seen in a bucket used to cost a HyperLogLog key of its own and a member of the
bucket's ranking, about 290 bytes (``make bench-memory``: 0.9 KB an event on the soak, most
of it these). Nearly every page has a handful of visitors in a bucket, so a field holding
its views and up to ``INLINE_MAX`` visitor elements inline costs about 35 bytes, and the
hash (one key for a group of pages) lives in Redis's compact listpack encoding. The 7th
visitor *promotes* the page: its visitors move to a real HyperLogLog
(``contracts.aggregates.PAGE_VISITORS``) and the field keeps only the views and a mark.

A field's value is text (the apply script reads it in Lua): the views in decimal, then ``:``
and the inline elements back to back, or ``!`` once promoted. ``"12:AbCdEfGhIjKlMnOp"``
is 12 views by two visitors.

Visitor elements: every HyperLogLog holds ``visitor_element(user_id)``, not the raw id, so
the inline elements of a page and its promoted HyperLogLog hold the same thing: adding the
inline ones to a HyperLogLog sets exactly the registers they would have set there, and a
union over buckets, some inline and some promoted, counts what one HyperLogLog of all the
visitors would. 48 bits of BLAKE2b: two visitors of one site share an element (and count
as one) with odds of about n^2 / 2^49, 0.002 at a million visitors, far inside the
HyperLogLog's own 0.81%.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

ELEMENT_CHARS = 8  # base64url of 6 bytes: printable, so it travels in the script's JSON
INLINE_MAX = 6  # visitors kept inline; the next one promotes the page
PROMOTED = "!"
INLINE = ":"
# Pages per hash: the hashes of a bucket split its pages by a hash of the page id, so a
# 20,000-page site's all-time bucket holds about 310 pages a hash, within the listpack
# encoding's bound the stack sets (``hash-max-listpack-entries 512``). A minute holds few
# pages: one hash.
GROUPS = {None: 64, "d": 64, "h": 16, "m": 1}  # by unit code (None: all time)
# The best pages of each bucket are also kept in order (``contracts.aggregates.TOP_PAGES``):
# ``/stats`` (100 rows by default) reads them without reading every page of the bucket.
LEADERBOARD = 128


def visitor_element(user_id: str) -> str:
    """What every HyperLogLog and inline visitor set holds for a visitor (see above)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode()


def group_of(page: str, unit: str | None) -> int:
    """Which of its bucket's hashes holds a page (``GROUPS``)."""
    groups = GROUPS[unit]
    return 0 if groups == 1 else zlib.crc32(page.encode()) % groups


def pack(views: int, elements: list[str] | None) -> str:
    """A field's value: views and the inline elements, or None for a promoted page."""
    if elements is None:
        return f"{views}{PROMOTED}"
    return f"{views}{INLINE}{''.join(elements)}"


def unpack(value: str) -> tuple[int, tuple[str, ...] | None]:
    """Views and the inline elements of a field's value (None: promoted)."""
    if value.endswith(PROMOTED):
        return int(value[:-1]), None
    views, _, inline = value.partition(INLINE)
    return int(views), tuple(inline[i:i + ELEMENT_CHARS]
                             for i in range(0, len(inline), ELEMENT_CHARS))


def views_of(value: str) -> int:
    """The views of a field's value, without splitting its elements."""
    end = value.find(INLINE)
    return int(value[:-1] if end < 0 else value[:end])
