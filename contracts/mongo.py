"""MongoDB names and the raw-event document shape shared by the aggregator and the query API.

Buckets are stored as plain integer fields because FerretDB has no date operators; the
Kafka partition and offset are stored so a redelivered record can tell a redo after a
crash (same partition and offset) from a client retry (another offset).
"""

from __future__ import annotations

from typing import Any

from bson import DatetimeMS

from contracts.aggregates import UNITS
from contracts.event import PageView

DATABASE = "pageviews"
EVENTS = "events"

# (name, keys) of the indexes the fallback queries need.
EVENT_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("site_minute", [("site_id", 1), ("minute", 1)]),
    ("site_page_minute", [("site_id", 1), ("page_id", 1), ("minute", 1)]),
]


# The epoch-ms range a Python datetime can hold (years 1 to 9999): a document outside it
# could be stored but never read back.
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999


def event_document(event: PageView, partition: int, offset: int) -> dict[str, Any]:
    """ValueError when a time is outside the datetime range (the pipeline dead-letters it)."""
    for ms in (event.ts, event.received_at):
        if not _MIN_MS <= ms <= _MAX_MS:
            raise ValueError(f"{ms} ms since the epoch is beyond year 1..9999")
    return {
        "_id": event.event_id, "site_id": event.site_id, "page_id": event.page_id,
        # BSON dates straight from epoch ms: no datetime object built per field and event
        # (read back, they are datetimes as ever).
        "user_id": event.user_id, "ts": DatetimeMS(event.ts),
        "received_at": DatetimeMS(event.received_at),
        **{unit.mongo_field: unit.bucket_of(event.ts) for unit in UNITS},
        "partition": partition, "offset": offset,
    }
