"""Which stores answer, seen by two observers: the pipeline's own calls and a background
ping, so ``/readyz`` reports an outage even while the aggregator is idle.

A store is up when the latest call of every observer succeeded: the ping alone would miss
errors only real work meets (a Redis over ``maxmemory`` still answers PING but refuses
writes with OOM), and the pipeline alone says nothing between batches. ``reasons`` says why
a store is down (the latest error), for ``/readyz``. Each
state change is logged once (``outage.Outage``): down with the error, up with how long it
lasted and how many calls failed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge

from aggregator.outage import Outage

log = logging.getLogger(__name__)
STORES = ("mongo", "redis", "kafka")
MAX_REASON = 200  # characters of an error shown in /readyz


class StoreHealth:
    def __init__(self, gauge: Gauge | None = None, stores: tuple[str, ...] = STORES) -> None:
        self._gauge = gauge
        self._failing: dict[str, dict[str, str]] = {s: {} for s in stores}  # observer: error
        self._outages = {s: Outage(log, "store_unavailable", "store_recovered", store=s)
                         for s in stores}
        for store in stores:
            self._show(store)

    def report(self, store: str, observer: str, error: BaseException | None) -> None:
        """The outcome of one call to ``store`` made by ``observer``."""
        failing = self._failing[store]
        if error is not None:
            failing[observer] = f"{type(error).__name__}: {error}"[:MAX_REASON]
            self._outages[store].failed(error)
        else:
            failing.pop(observer, None)
            if not failing:
                self._outages[store].succeeded()
        self._show(store)

    def up(self, store: str) -> bool:
        return not self._failing[store]

    def checks(self) -> dict[str, bool]:
        return {store: self.up(store) for store in self._failing}

    def reasons(self) -> dict[str, str]:
        """Store -> why it is down (each failing observer's latest error), for stores down."""
        return {store: "; ".join(f"{observer}: {error}" for observer, error
                                 in sorted(failing.items()))
                for store, failing in self._failing.items() if failing}

    def _show(self, store: str) -> None:
        if self._gauge is not None:
            self._gauge.labels(store).set(1 if self.up(store) else 0)


Ping = Callable[[], Awaitable[object]]


async def ping_stores(health: StoreHealth, pings: dict[str, Ping], stopping: asyncio.Event,
                      interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
    """Ping every store each ``interval_s``, all at once, each for at most ``timeout_s``."""

    async def ping_one(store: str, ping: Ping) -> None:
        try:
            await asyncio.wait_for(ping(), timeout_s)
        except Exception as exc:  # any failure to answer a ping means: not ready
            health.report(store, "ping", exc)
        else:
            health.report(store, "ping", None)

    while not stopping.is_set():
        await asyncio.gather(*(ping_one(s, p) for s, p in pings.items()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
