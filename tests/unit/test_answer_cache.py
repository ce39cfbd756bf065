"""The answer cache as a spec: single flight, a short TTL, errors never kept, cancellation
contained, memory bounded. A fake monotonic clock and gated computations, no servers."""

from __future__ import annotations

import asyncio

import pytest

from query_api.answer_cache import AnswerCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Computation:
    """Counts its runs; each run waits for ``gate`` (open by default) and answers
    ``answer-<run>``, or raises ``error`` when one is set."""

    def __init__(self, gated: bool = False) -> None:
        self.calls = 0
        self.finished = 0
        self.gate = asyncio.Event()
        self.error: Exception | None = None
        if not gated:
            self.gate.set()

    async def __call__(self) -> str:
        self.calls += 1
        run = self.calls
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.finished += 1
        return f"answer-{run}"


def cache(ttl_s: float = 0.02, max_keys: int = 100) -> tuple[AnswerCache[str], FakeClock,
                                                              list[str]]:
    clock, outcomes = FakeClock(), list[str]()
    return AnswerCache(ttl_s, clock, max_keys, record=outcomes.append), clock, outcomes


async def settle() -> None:
    """Lets every started task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_identical_calls_share_one_computation_and_answer() -> None:
    answers, _, outcomes = cache()
    compute = Computation(gated=True)
    waiters = [asyncio.create_task(answers.get_or_compute("k", compute)) for _ in range(3)]
    await settle()
    compute.gate.set()
    assert await asyncio.gather(*waiters) == ["answer-1"] * 3
    assert compute.calls == 1
    assert outcomes == ["miss", "coalesced", "coalesced"]


async def test_different_keys_compute_separately() -> None:
    answers, _, _ = cache()
    compute = Computation()
    both = await asyncio.gather(answers.get_or_compute("a", compute),
                                answers.get_or_compute("b", compute))
    assert list(both) == ["answer-1", "answer-2"]
    assert compute.calls == 2


async def test_an_answer_is_reused_within_the_ttl_and_recomputed_after_it() -> None:
    answers, clock, outcomes = cache(ttl_s=0.02)
    compute = Computation()
    assert await answers.get_or_compute("k", compute) == "answer-1"
    clock.now += 0.019
    assert await answers.get_or_compute("k", compute) == "answer-1"
    clock.now += 0.002  # 21 ms after the computation started
    assert await answers.get_or_compute("k", compute) == "answer-2"
    assert outcomes == ["miss", "hit", "miss"]


async def test_ttl_zero_recomputes_the_next_call_but_still_coalesces_concurrent_ones() -> None:
    answers, _, outcomes = cache(ttl_s=0)
    compute = Computation(gated=True)
    waiters = [asyncio.create_task(answers.get_or_compute("k", compute)) for _ in range(2)]
    await settle()
    compute.gate.set()
    assert await asyncio.gather(*waiters) == ["answer-1"] * 2
    assert await answers.get_or_compute("k", compute) == "answer-2"  # same clock reading
    assert compute.calls == 2 and len(answers) == 0
    assert outcomes == ["miss", "coalesced", "miss"]


async def test_an_error_reaches_every_waiter_and_is_not_kept() -> None:
    answers, _, _ = cache(ttl_s=60)
    compute = Computation(gated=True)
    compute.error = ValueError("store down")
    waiters = [asyncio.create_task(answers.get_or_compute("k", compute)) for _ in range(2)]
    await settle()
    compute.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [repr(r) for r in results] == [repr(ValueError("store down"))] * 2
    compute.error = None
    assert await answers.get_or_compute("k", compute) == "answer-2"
    assert compute.calls == 2


async def test_a_cancelled_waiter_does_not_cancel_the_computation_for_the_others() -> None:
    answers, _, _ = cache()
    compute = Computation(gated=True)
    first = asyncio.create_task(answers.get_or_compute("k", compute))
    second = asyncio.create_task(answers.get_or_compute("k", compute))
    await settle()
    first.cancel()
    await settle()
    compute.gate.set()
    assert await second == "answer-1"
    assert first.cancelled() and compute.finished == 1


async def test_when_every_waiter_is_cancelled_the_computation_still_finishes() -> None:
    answers, _, outcomes = cache(ttl_s=60)
    compute = Computation(gated=True)
    only = asyncio.create_task(answers.get_or_compute("k", compute))
    await settle()
    only.cancel()
    await settle()
    compute.gate.set()
    await settle()
    assert compute.finished == 1
    assert await answers.get_or_compute("k", compute) == "answer-1"
    assert outcomes == ["miss", "hit"]


async def test_at_most_max_keys_are_held_and_the_oldest_give_way() -> None:
    answers, clock, _ = cache(ttl_s=60, max_keys=3)
    compute = Computation()
    for key in range(5):
        await answers.get_or_compute(key, compute)
        clock.now += 1
        assert len(answers) <= 3
    assert await answers.get_or_compute(4, compute) == "answer-5"  # newest still held
    assert await answers.get_or_compute(0, compute) == "answer-6"  # oldest was evicted
    assert compute.calls == 6


async def test_expired_answers_are_swept_when_a_new_computation_starts() -> None:
    answers, clock, _ = cache(ttl_s=0.02)
    compute = Computation()
    for key in ("a", "b", "c"):
        await answers.get_or_compute(key, compute)
    clock.now += 1
    await answers.get_or_compute("d", compute)
    assert len(answers) == 1


def test_a_negative_ttl_or_no_room_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        AnswerCache(-1)
    with pytest.raises(ValueError, match="max_keys"):
        AnswerCache(0.02, max_keys=0)
