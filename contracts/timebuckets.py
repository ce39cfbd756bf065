"""Time in epoch milliseconds, and the lengths of the time units (``contracts.aggregates``
describes the units themselves)."""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def ms_to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_z(ts_ms: int) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and second precision, e.g. ``2026-11-28T10:00:00Z``."""
    return ms_to_datetime(ts_ms).strftime("%Y-%m-%dT%H:%M:%SZ")
