"""Single flight and a tiny per-process answer cache for the stats handlers (issue 13).

Dashboards poll, and many of them ask the same question at the same moment; each answer can
cost a Redis ranking of every page. Identical concurrent requests therefore share one
computation, and a finished answer is reused for ``ttl_s`` (a few tens of milliseconds,
``QUERY_ANSWER_CACHE_MS``) so the freshness budget (p99 < 100 ms) still holds.

Called from ``routes.endpoint`` on the event loop, behind auth; never blocks. Only
successful answers are kept: an exception reaches every waiter of that computation and the
next request computes afresh. One waiter being cancelled (a client going away) does not
cancel the shared computation, which runs in its own task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
DEFAULT_MAX_KEYS = 1024
OUTCOMES = ("hit", "coalesced", "miss")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    """One key's computation: in flight while ``task`` runs, a cached answer once it is done.

    ``started`` is when the computation began: the answer's data is at least that old, so
    counting the TTL from there keeps a cached answer's age under the TTL."""

    task: asyncio.Task[T]
    started: float


class AnswerCache(Generic[T]):
    """Per key: at most one computation in flight, and its answer for ``ttl_s`` after it
    started. ``ttl_s == 0`` keeps the single flight and caches nothing. At most
    ``max_keys`` keys are held; the oldest give way first. ``clock`` is monotonic seconds
    (injected in tests); ``record`` hears each lookup's outcome (hit, coalesced, miss)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = DEFAULT_MAX_KEYS,
                 record: Callable[[str], None] | None = None) -> None:
        if ttl_s < 0 or max_keys < 1:
            raise ValueError("ttl_s must be >= 0 and max_keys >= 1")
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._record = record
        self._entries: dict[Hashable, _Entry[T]] = {}  # insertion order: oldest start first

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_compute(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The answer for ``key``: cached, the one being computed, or a new computation."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and not entry.task.done():
            outcome = "coalesced"
        elif entry is not None and self._fresh(entry, now):
            outcome = "hit"
        else:
            outcome = "miss"
            entry = self._start(key, compute, now)
        if self._record is not None:
            self._record(outcome)
        # shield: cancelling this waiter leaves the computation running for the others.
        return await asyncio.shield(entry.task)

    def _start(self, key: Hashable, compute: Callable[[], Awaitable[T]], now: float
               ) -> _Entry[T]:
        self._entries.pop(key, None)
        self._sweep(now)
        while len(self._entries) >= self.max_keys:  # full of fresh or running: oldest goes
            del self._entries[next(iter(self._entries))]

        async def run() -> T:
            return await compute()

        entry = _Entry(asyncio.create_task(run()), now)
        self._entries[key] = entry
        entry.task.add_done_callback(lambda _: self._finished(key, entry))
        return entry

    def _fresh(self, entry: _Entry[T], now: float) -> bool:
        """A successful answer younger than the TTL. (A failed one is dropped by
        ``_finished``, but that callback may not have run yet.)"""
        task = entry.task
        return (now - entry.started < self.ttl_s and not task.cancelled()
                and task.exception() is None)

    def _finished(self, key: Hashable, entry: _Entry[T]) -> None:
        """Drops a failed or cancelled computation (never cached), and every answer when
        the TTL is 0. The entry may already have been evicted or replaced: leave others."""
        task = entry.task
        failed = task.cancelled() or task.exception() is not None  # also marks it retrieved
        if (failed or self.ttl_s == 0) and self._entries.get(key) is entry:
            del self._entries[key]

    def _sweep(self, now: float) -> None:
        """Drops expired answers from the front (the oldest starts), stepping over
        computations still running and stopping at the first fresh answer."""
        expired = []
        for key, entry in self._entries.items():
            if not entry.task.done():
                continue
            if now - entry.started < self.ttl_s:
                break
            expired.append(key)
        for key in expired:
            del self._entries[key]
