"""Lag and recovery arithmetic over the samples a run took: pure, so it is unit-tested.

The consumer group's lag (records on the topic not yet committed) is sampled about once a
second. A fault's baseline gives its steady value (the median: a few slow samples do not
move it); after the injection the peak is the highest sample and the lag counts as back
when a sample after the peak is within ``near`` of the steady value: one second of load
(``rate`` records) or twice the steady value, whichever is more.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Sample = tuple[float, int | None]  # (monotonic seconds, lag; None: not readable then)


@dataclass(frozen=True)
class LagFigures:
    steady: int | None  # median of the baseline's samples
    peak: int | None  # highest sample from the injection on
    settled_s: float | None  # injection -> lag near steady again; None: never in the window
    unreadable: int  # samples that could not be read (Kafka down)

    def as_json(self) -> dict[str, Any]:
        return {"steady": self.steady, "peak": self.peak,
                "settled_s": None if self.settled_s is None else round(self.settled_s, 1),
                "unreadable_samples": self.unreadable}


def threshold(steady: int, rate: float) -> int:
    """The highest lag that counts as back near ``steady``."""
    return max(2 * steady, steady + int(rate))


def lag_figures(samples: Sequence[Sample], baseline: tuple[float, float], injected_at: float,
                end: float, rate: float) -> LagFigures:
    """Figures of one fault from the samples taken during its baseline and after its
    injection (up to ``end``)."""
    base = [lag for t, lag in samples if baseline[0] <= t < baseline[1] and lag is not None]
    after = [(t, lag) for t, lag in samples if injected_at <= t <= end]
    readable = [(t, lag) for t, lag in after if lag is not None]
    unreadable = len(after) - len(readable)
    steady = int(statistics.median(base)) if base else None
    if not readable:
        return LagFigures(steady, None, None, unreadable)
    peak_t, peak = max(readable, key=lambda s: (s[1], -s[0]))
    if steady is None:
        return LagFigures(None, peak, None, unreadable)
    limit = threshold(steady, rate)
    if peak <= limit and unreadable == 0:
        return LagFigures(steady, peak, 0.0, unreadable)
    settled = next((t for t, lag in readable if t >= peak_t and lag <= limit), None)
    return LagFigures(steady, peak, None if settled is None else settled - injected_at,
                      unreadable)
