"""Turning ``period`` or ``from``/``to`` into a half-open UTC range of whole minutes.

Why whole minutes: the finest bucket Redis keeps is a minute, so a range that is not
minute-aligned could not be answered exactly from Redis. ``from`` is rounded down and ``to``
up to the minute, and every answer states the range it really covers.

Why the rolling periods end at the end of the current hour (``24h``) or day (``7d``,
``30d``): they then tile into hour and day buckets, which Redis keeps with per-page
visitor HyperLogLogs, so they are answered from Redis for every endpoint.

The clock is passed in (epoch milliseconds), so tests control "now". Pure; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from contracts.keys import REALTIME_WINDOW_MINUTES
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, datetime_to_ms, iso_z
from query_api.params import BadParameter

PERIODS = ("realtime", "today", "24h", "7d", "30d", "month", "all")
REALTIME_MINUTES = REALTIME_WINDOW_MINUTES
MAX_RANGE_DAYS = 3660  # ten years: bounds the number of buckets one answer reads
LATEST_MS = 221_845_392_000_000  # 9000-01-01: far enough, and its range ends stay printable
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[start_ms, end_ms)``; both ``None`` means all time."""

    start_ms: int | None
    end_ms: int | None

    @property
    def bounded(self) -> bool:
        return self.start_ms is not None and self.end_ms is not None

    def bounds(self) -> tuple[int, int]:
        """Start and end of a bounded range (a programming error to ask of all time)."""
        if self.start_ms is None or self.end_ms is None:
            raise ValueError("all-time range has no bounds")
        return self.start_ms, self.end_ms

    def previous(self) -> TimeRange:
        """The range of equal length that ends where this one starts."""
        start, end = self.bounds()
        return TimeRange(start - (end - start), start)

    def iso(self) -> tuple[str | None, str | None]:
        return (None if self.start_ms is None else iso_z(self.start_ms),
                None if self.end_ms is None else iso_z(self.end_ms))


ALL_TIME = TimeRange(None, None)


def _floor(ms: int, unit: int) -> int:
    return ms // unit * unit


def _ceil(ms: int, unit: int) -> int:
    return -(-ms // unit) * unit


def period_range(period: str, now_ms: int) -> TimeRange:
    """The range a named period covers at ``now_ms``."""
    minute_end = _floor(now_ms, MINUTE_MS) + MINUTE_MS
    hour_end = _floor(now_ms, HOUR_MS) + HOUR_MS
    day_start = _floor(now_ms, DAY_MS)
    if period == "realtime":
        return TimeRange(minute_end - REALTIME_MINUTES * MINUTE_MS, minute_end)
    if period == "today":
        return TimeRange(day_start, day_start + DAY_MS)
    if period == "24h":
        return TimeRange(hour_end - 24 * HOUR_MS, hour_end)
    if period in ("7d", "30d"):
        days = int(period[:-1])
        return TimeRange(day_start + DAY_MS - days * DAY_MS, day_start + DAY_MS)
    if period == "month":
        today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return TimeRange(_date_ms(first), _date_ms(following))
    if period == "all":
        return ALL_TIME
    raise BadParameter("period", "must be one of " + ", ".join(PERIODS))


def _date_ms(day: date) -> int:
    return datetime_to_ms(datetime(day.year, day.month, day.day, tzinfo=UTC))


def parse_instant(name: str, raw: str, *, is_end: bool) -> int:
    """An RFC 3339 date or date-time (UTC, or with an offset converted to UTC) as epoch ms,
    rounded to the minute outward. A bare date as ``to`` means the end of that day."""
    text = raw.strip()
    try:
        if _DATE_RE.fullmatch(text):
            ms = _date_ms(date.fromisoformat(text))
            if not 0 <= ms < LATEST_MS:
                raise BadParameter(name, "must be between 1970-01-01 and 9000-01-01")
            return ms + DAY_MS if is_end else ms
        if "T" not in text.upper() or len(text) > 40:
            raise ValueError(text)
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(name, "must be an RFC 3339 date (2026-11-28) or date-time "
                                 "(2026-11-28T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:  # an offset can carry year 1 before year 1, or year 9999 past the last year
        ms = datetime_to_ms(moment.astimezone(UTC))
    except OverflowError:
        raise BadParameter(name, "must be between 1970-01-01 and 9000-01-01") from None
    if not 0 <= ms < LATEST_MS:
        raise BadParameter(name, "must be between 1970-01-01 and 9000-01-01")
    return _ceil(ms, MINUTE_MS) if is_end else _floor(ms, MINUTE_MS)


def parse_range(query: Mapping[str, str], now_ms: int, default_period: str = "all"
                ) -> TimeRange:
    """``period`` or ``from``/``to`` from the query string; a 400 names the parameter."""
    raw_from, raw_to, period = query.get("from"), query.get("to"), query.get("period")
    if raw_from is None and raw_to is None:
        return period_range(default_period if period is None else period, now_ms)
    if period is not None:
        raise BadParameter("period", "give either period or from/to, not both")
    if raw_from is None:
        raise BadParameter("from", "is required when to is given")
    start = parse_instant("from", raw_from, is_end=False)
    end = (parse_instant("to", raw_to, is_end=True) if raw_to is not None
           else _floor(now_ms, MINUTE_MS) + MINUTE_MS)
    if end <= start:
        raise BadParameter("to", "must be later than from")
    if end - start > MAX_RANGE_DAYS * DAY_MS:
        raise BadParameter("to", f"the range may span at most {MAX_RANGE_DAYS} days")
    return TimeRange(start, end)
