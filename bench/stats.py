"""Pure statistics for the benchmark figures: percentiles, rates and ratios.

Kept free of I/O so the numbers the README quotes are computed by tested code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation between closest ranks;
    NaN for no values (a figure that was not measured is shown as such, never as 0)."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: float, seconds: float) -> float:
    """Events (or requests) per second; NaN when no time passed."""
    return count / seconds if seconds > 0 else math.nan


def ratio(value: float | None, limit: float | None) -> float | None:
    """``value / limit``, or None when either is missing or the limit is not positive."""
    if value is None or limit is None or math.isnan(value) or math.isnan(limit) or limit <= 0:
        return None
    return value / limit


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in milliseconds."""

    p50: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        return cls(percentile(samples_ms, 50), percentile(samples_ms, 99),
                   percentile(samples_ms, 99.9), max(samples_ms) if samples_ms else math.nan)

    def as_dict(self) -> dict[str, float]:
        return {"p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999,
                "max_ms": self.max}


@dataclass(frozen=True, slots=True)
class Peak:
    """The best of a series of measurements at rising concurrency."""

    concurrency: int
    value: float
    at_edge: bool  # the best was the highest concurrency tried: the peak may lie beyond


def peak(points: Sequence[tuple[int, float]], tolerance: float = 0.05) -> Peak | None:
    """The highest value of (concurrency, value) points (NaN ignored). ``at_edge`` when
    the highest concurrency tried is within ``tolerance`` of the best and more than one
    level was tried: throughput was still rising (or flat) there, so higher concurrency
    might reach more."""
    valid = sorted((c, v) for c, v in points if not math.isnan(v))
    if not valid:
        return None
    best_c, best_v = max(valid, key=lambda p: p[1])
    top_v = valid[-1][1]
    edge = len(valid) > 1 and top_v >= best_v * (1 - tolerance)
    return Peak(best_c, best_v, edge)
