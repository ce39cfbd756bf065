"""The search for the highest sustained rate: double until a rate is not sustained, then
bisect between the highest sustained and the lowest failed a few times.

Pure (the e2e suite runs each step and decides whether it was sustained; this module only
picks the next rate), so the search itself is unit-tested. A first rate that already fails
is halved instead, as many times as the bisection allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_RATE = 50  # events/s: below this a step says nothing about throughput
GRANULE = 100  # rates are rounded to this many events/s (above it)


@dataclass(frozen=True, slots=True)
class Tried:
    rate: int
    sustained: bool


def _round(rate: float) -> int:
    if rate < GRANULE:
        return max(MIN_RATE, round(rate))
    return int(round(rate / GRANULE) * GRANULE)


def next_rate(tried: Sequence[Tried], start: int, max_rate: int, bisect_steps: int
              ) -> int | None:
    """The next rate to try, or None when the search is over."""
    if not tried:
        return min(start, max_rate)
    rates = {t.rate for t in tried}
    failed = [t.rate for t in tried if not t.sustained]
    if not failed:
        top = max(rates)
        return None if top >= max_rate else min(top * 2, max_rate)
    first_failure = next(i for i, t in enumerate(tried) if not t.sustained)
    if len(tried) - 1 - first_failure >= bisect_steps:
        return None
    hi = min(failed)
    below = [t.rate for t in tried if t.sustained and t.rate < hi]
    lo = max(below, default=0)
    candidate = _round(hi / 2) if lo == 0 else _round((lo + hi) / 2)
    if candidate < MIN_RATE or candidate in rates or not lo < candidate < hi:
        return None
    return candidate


def highest_sustained(tried: Sequence[Tried]) -> int | None:
    """The highest rate sustained below the lowest failure (None: none was)."""
    failed = [t.rate for t in tried if not t.sustained]
    ceiling = min(failed, default=None)
    good = [t.rate for t in tried if t.sustained and (ceiling is None or t.rate < ceiling)]
    return max(good, default=None)
