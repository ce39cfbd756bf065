"""MongoDB names and the raw-event document shape shared by the aggregator and the query API.

Buckets are stored as plain integer fields because FerretDB has no date operators; the
Kafka partition and offset are stored so a redelivered record can tell a redo after a
crash (same partition and offset) from a client retry (another offset).

A stored event's identity is the pair (site, event id): event ids are unique per site, never
globally, so one site must not be able to suppress another's events by reusing their ids.
The ``_id`` is one string, ``<site_id>\x1f<event_id>``: FerretDB answers an exact-``_id``
filter on a string from an index (a compound ``_id`` document or a dotted path it scans), and
the separator (ASCII unit separator) can occur in neither part, since site ids are
``[A-Za-z0-9._-]`` and event ids refuse control characters. So the pair is recovered exactly,
and an ``_id`` written before the pair was the identity (the bare event id, never holding
the separator) is told apart from a new one (``aggregator.recovery.migrate_ids``).
"""

from __future__ import annotations

from typing import Any

from bson import DatetimeMS

from contracts.aggregates import UNITS
from contracts.event import EXTRA_TEXT_FIELDS, PageView, v2_fields
from contracts.timebuckets import datetime_to_ms

DATABASE = "pageviews"
EVENTS = "events"
# Small documents about the database itself (which migrations are done).
META = "meta"
EVENT_KEY_SEPARATOR = "\x1f"

# (name, keys) of the indexes the fallback queries need.
EVENT_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("site_minute", [("site_id", 1), ("minute", 1)]),
    ("site_page_minute", [("site_id", 1), ("page_id", 1), ("minute", 1)]),
]


# The epoch-ms range a Python datetime can hold (years 1 to 9999): a document outside it
# could be stored but never read back.
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999


def event_key(site_id: str, event_id: str) -> str:
    """The ``_id`` of a stored event: its identity is (site, event id)."""
    return f"{site_id}{EVENT_KEY_SEPARATOR}{event_id}"


def event_id_of(document_id: str) -> str:
    """The event id from a stored ``_id`` (a bare one, from before the pair, as it is)."""
    return document_id.partition(EVENT_KEY_SEPARATOR)[2] or document_id


def event_document(event: PageView, partition: int, offset: int) -> dict[str, Any]:
    """ValueError when a time is outside the datetime range (the pipeline dead-letters it)."""
    for ms in (event.ts, event.received_at):
        if not _MIN_MS <= ms <= _MAX_MS:
            raise ValueError(f"{ms} ms since the epoch is beyond year 1..9999")
    document: dict[str, Any] = {
        "_id": event_key(event.site_id, event.event_id), "site_id": event.site_id,
        "page_id": event.page_id,
        # BSON dates straight from epoch ms: no datetime object built per field and event
        # (read back, they are datetimes as ever).
        "user_id": event.user_id, "ts": DatetimeMS(event.ts),
        "received_at": DatetimeMS(event.received_at),
        **{unit.mongo_field: unit.bucket_of(event.ts) for unit in UNITS},
        "partition": partition, "offset": offset,
    }
    return document | v2_fields(event)


# The fields a stored event is read back from (``page_view_of``): the event's own, not the
# buckets, the classification the aggregator added (``dims``) or where it was in the topic.
EVENT_FIELDS: dict[str, int] = {
    "_id": 1, "site_id": 1, "page_id": 1, "user_id": 1, "ts": 1, "received_at": 1,
    **{field: 1 for field, _ in EXTRA_TEXT_FIELDS}, "props": 1, "via": 1,
    "shards": 1}


def page_view_of(document: dict[str, Any]) -> PageView:
    """The event ``event_document`` stored, whole: a rebuild from MongoDB must see what live
    counting saw (a named event is not a page view, a bot's User-Agent is filtered)."""
    ts = datetime_to_ms(document["ts"])
    received = document.get("received_at")
    props = document.get("props")
    return PageView(
        event_id_of(document["_id"]), document["site_id"], document["page_id"],
        document["user_id"], ts, ts if received is None else datetime_to_ms(received),
        props=None if props is None else tuple(props.items()), via=document.get("via"),
        shards=document.get("shards", 1),
        **{field: document.get(field) for field, _ in EXTRA_TEXT_FIELDS})
