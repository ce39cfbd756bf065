"""MongoDB names and the raw-event document shape shared by the aggregator and the query API.

Buckets are stored as plain integer fields because FerretDB has no date operators; the
Kafka partition and offset are stored so a redelivered record can tell a redo after a
crash (same partition and offset) from a client retry (another offset).
"""

from __future__ import annotations

from typing import Any

from contracts.aggregates import UNITS
from contracts.event import PageView
from contracts.timebuckets import ms_to_datetime

DATABASE = "pageviews"
EVENTS = "events"

# (name, keys) of the indexes the fallback queries need.
EVENT_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("site_minute", [("site_id", 1), ("minute", 1)]),
    ("site_page_minute", [("site_id", 1), ("page_id", 1), ("minute", 1)]),
]


def event_document(event: PageView, partition: int, offset: int) -> dict[str, Any]:
    return {
        "_id": event.event_id, "site_id": event.site_id, "page_id": event.page_id,
        "user_id": event.user_id, "ts": ms_to_datetime(event.ts),
        "received_at": ms_to_datetime(event.received_at),
        **{unit.mongo_field: unit.bucket_of(event.ts) for unit in UNITS},
        "partition": partition, "offset": offset,
    }
