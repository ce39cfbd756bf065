"""UTC time buckets of an event, as plain integers.

Buckets are stored on every raw event in MongoDB and used in Redis key names, so the
aggregator, the query API and the replay all bucket the same way without date operators
(FerretDB has no ``$dateTrunc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class Buckets:
    """Epoch-based bucket numbers: minutes, hours and days since 1970-01-01T00:00Z."""

    minute: int
    hour: int
    day: int


def buckets_of(ts_ms: int) -> Buckets:
    return Buckets(minute=ts_ms // MINUTE_MS, hour=ts_ms // HOUR_MS, day=ts_ms // DAY_MS)


def ms_to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_z(ts_ms: int) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and second precision, e.g. ``2026-11-28T10:00:00Z``."""
    return ms_to_datetime(ts_ms).strftime("%Y-%m-%dT%H:%M:%SZ")
