"""Time in epoch milliseconds, and the lengths of the time units (``contracts.aggregates``
describes the units themselves)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ts_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ts_ms)


def datetime_to_ms(moment: datetime) -> int:
    """Exact in integers (a float timestamp times 1000 can come out a millisecond short)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since = moment - _EPOCH
    return since.days * DAY_MS + since.seconds * 1000 + since.microseconds // 1000


def iso_z(ts_ms: int) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and second precision, e.g. ``2026-11-28T10:00:00Z``."""
    return ms_to_datetime(ts_ms).strftime("%Y-%m-%dT%H:%M:%SZ")
