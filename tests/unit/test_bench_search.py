"""The search for the highest sustained end-to-end rate, and the peak over concurrencies."""

from __future__ import annotations

import math

from bench.search import Tried, highest_sustained, next_rate
from bench.stats import peak


def run_search(capacity: int, start: int = 1000, max_rate: int = 200_000,
               bisect_steps: int = 2) -> list[int]:
    """The rates the search tries against a pipeline that sustains up to ``capacity``."""
    tried: list[Tried] = []
    while (rate := next_rate(tried, start, max_rate, bisect_steps)) is not None:
        tried.append(Tried(rate, rate <= capacity))
        assert len(tried) < 50, "the search must end"
    return [t.rate for t in tried]


def test_the_search_doubles_while_sustained_then_bisects_twice() -> None:
    assert run_search(capacity=10_000) == [1000, 2000, 4000, 8000, 16_000, 12_000, 10_000]


def test_the_highest_sustained_rate_is_below_the_lowest_failure() -> None:
    tried = [Tried(r, r <= 10_000) for r in run_search(capacity=10_000)]
    assert highest_sustained(tried) == 10_000


def test_a_failure_after_a_sustained_bisection_step_narrows_from_above() -> None:
    assert run_search(capacity=9_000) == [1000, 2000, 4000, 8000, 16_000, 12_000, 10_000]
    tried = [Tried(r, r <= 9_000) for r in run_search(capacity=9_000)]
    assert highest_sustained(tried) == 8000


def test_a_first_rate_that_fails_is_halved_instead() -> None:
    assert run_search(capacity=300) == [1000, 500, 200]
    tried = [Tried(r, r <= 300) for r in run_search(capacity=300)]
    assert highest_sustained(tried) == 200


def test_nothing_sustained_reports_no_rate() -> None:
    tried = [Tried(r, False) for r in run_search(capacity=0)]
    assert highest_sustained(tried) is None


def test_the_search_stops_at_the_maximum_rate() -> None:
    assert run_search(capacity=10**9, max_rate=5000) == [1000, 2000, 4000, 5000]


def test_no_bisection_steps_stops_at_the_first_failure() -> None:
    assert run_search(capacity=3000, bisect_steps=0) == [1000, 2000, 4000]


def test_a_later_sustained_rate_above_a_failure_is_not_the_highest() -> None:
    # noise: 4,000 failed, then 6,000 passed; only rates below the lowest failure count
    assert highest_sustained([Tried(2000, True), Tried(4000, False), Tried(6000, True)]) == 2000


def test_peak_is_the_best_concurrency_and_flags_a_rise_at_the_edge() -> None:
    best = peak([(16, 100.0), (64, 300.0), (256, 310.0)])
    assert best is not None and best.concurrency == 256 and best.at_edge
    best = peak([(16, 100.0), (64, 300.0), (256, 200.0)])
    assert best is not None and best.concurrency == 64 and not best.at_edge


def test_peak_within_tolerance_at_the_highest_concurrency_is_at_the_edge() -> None:
    best = peak([(64, 300.0), (256, 290.0)])
    assert best is not None and best.concurrency == 64 and best.at_edge


def test_peak_of_one_level_is_not_at_an_edge_and_nan_is_ignored() -> None:
    best = peak([(64, 300.0), (256, math.nan)])
    assert best is not None and best.value == 300.0 and not best.at_edge
    assert peak([]) is None
