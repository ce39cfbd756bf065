"""Covering a range exactly with the fewest Redis time buckets, and knowing which still exist.

Why: a range is answered by summing per-bucket counters and merging per-bucket
HyperLogLogs, so the fewer buckets the fewer keys are read. Days are used where whole days
fit, hours at the edges, minutes only where needed. Minute buckets live 48 h after they end
and hour buckets 90 days by default (``contracts.settings.Retention``), so a range needing an
expired bucket is answered from MongoDB instead (see ``query_api.service``). Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.settings import Retention
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS
from query_api.ranges import TimeRange

UNIT_MS = {"d": DAY_MS, "h": HOUR_MS, "m": MINUTE_MS}
INTERVAL_UNITS = {"minute": "m", "hour": "h", "day": "d"}
# A bucket whose key expires this soon is treated as gone: the answer must not change
# source halfway through reading it.
RETENTION_MARGIN_MS = 60_000


@dataclass(frozen=True, slots=True, order=True)
class Bucket:
    """One Redis time bucket: unit ``m``/``h``/``d`` and its epoch-based number."""

    unit: str
    number: int

    @property
    def start_ms(self) -> int:
        return self.number * UNIT_MS[self.unit]

    @property
    def end_ms(self) -> int:
        return (self.number + 1) * UNIT_MS[self.unit]


def tile(start_ms: int, end_ms: int) -> list[Bucket]:
    """The coarsest buckets that cover ``[start_ms, end_ms)`` exactly, in time order.
    Both ends must be whole minutes."""
    if start_ms % MINUTE_MS or end_ms % MINUTE_MS:
        raise ValueError("range ends must be whole minutes")
    out: list[Bucket] = []
    _cover(start_ms, end_ms, ("d", "h", "m"), out)
    return out


def _cover(start: int, end: int, units: tuple[str, ...], out: list[Bucket]) -> None:
    if start >= end:
        return
    unit, finer = units[0], units[1:]
    size = UNIT_MS[unit]
    first = -(-start // size) * size  # first whole bucket starts here
    last = end // size * size  # ... and the whole buckets end here
    if not finer:
        out.extend(Bucket(unit, n) for n in range(start // size, end // size))
        return
    if first >= last:
        _cover(start, end, finer, out)
        return
    _cover(start, first, finer, out)
    out.extend(Bucket(unit, n) for n in range(first // size, last // size))
    _cover(last, end, finer, out)


def slots(rng: TimeRange, interval: str) -> list[TimeRange]:
    """The time-series buckets of ``rng``: interval-aligned, the first and last clipped to
    the range."""
    start, end = rng.bounds()
    size = UNIT_MS[INTERVAL_UNITS[interval]]
    out: list[TimeRange] = []
    cursor = start
    while cursor < end:
        boundary = min(cursor // size * size + size, end)
        out.append(TimeRange(cursor, boundary))
        cursor = boundary
    return out


def slot_count(rng: TimeRange, interval: str) -> int:
    """How many slots ``slots`` would return, without building them."""
    start, end = rng.bounds()
    size = UNIT_MS[INTERVAL_UNITS[interval]]
    return (end - 1) // size - start // size + 1


def retained(bucket: Bucket, now_ms: int, retention: Retention) -> bool:
    """Whether Redis still holds this bucket's keys (day buckets stay forever)."""
    ttl_s = retention.ttl_of(bucket.unit)
    if ttl_s is None:
        return True
    return bucket.end_ms + ttl_s * 1000 > now_ms + RETENTION_MARGIN_MS
