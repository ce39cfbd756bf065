"""Covering a range exactly with the fewest Redis time buckets, and knowing which still exist.

Why: a range is answered by summing per-bucket counters and merging per-bucket
HyperLogLogs, so the fewer buckets the fewer keys are read. Days are used where whole days
fit, hours at the edges, minutes only where needed. Minute buckets live 48 h after they end
and hour buckets 90 days by default (``contracts.settings.Retention``), so a range needing an
expired bucket is answered from MongoDB instead (see ``query_api.service``). Pure; no I/O.
"""

from __future__ import annotations

from contracts.aggregates import MINUTE, UNIT_BY_CODE, UNIT_BY_INTERVAL, UNITS, Scope
from contracts.settings import Retention
from query_api.ranges import TimeRange

# A bucket whose key expires this soon is treated as gone: the answer must not change
# source halfway through reading it.
RETENTION_MARGIN_MS = 60_000
Bucket = Scope  # one Redis time bucket: a unit's code and its epoch-based number


def tile(start_ms: int, end_ms: int) -> list[Bucket]:
    """The coarsest buckets that cover ``[start_ms, end_ms)`` exactly, in time order.
    Both ends must be whole minutes."""
    if start_ms % MINUTE.ms or end_ms % MINUTE.ms:
        raise ValueError("range ends must be whole minutes")
    out: list[Bucket] = []
    _cover(start_ms, end_ms, tuple(u.code for u in UNITS), out)
    return out


def scope_count(rng: TimeRange) -> int:
    """How many scopes a range is read from: its buckets, or 1 for all time."""
    return len(tile(*rng.bounds())) if rng.bounded else 1


def _cover(start: int, end: int, units: tuple[str, ...], out: list[Bucket]) -> None:
    if start >= end:
        return
    unit, finer = units[0], units[1:]
    size = UNIT_BY_CODE[unit].ms
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
    size = UNIT_BY_INTERVAL[interval].ms
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
    size = UNIT_BY_INTERVAL[interval].ms
    return (end - 1) // size - start // size + 1


def retained(bucket: Bucket, now_ms: int, retention: Retention) -> bool:
    """Whether Redis still holds this bucket's keys (day buckets stay forever)."""
    ttl_s = retention.ttl_of(bucket.unit or "")
    if ttl_s is None:
        return True
    return bucket.end_ms + ttl_s * 1000 > now_ms + RETENTION_MARGIN_MS
