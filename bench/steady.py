"""A steady ingest load: a fixed number of events a second through the gateway, open-loop.

Why fixed-rate: "queries while ingesting" must mean the same ingest load in every run and
for every endpoint; a generator that sends as fast as it can would take whatever the
queries leave and measure a different mix each time. Events go to ``POST /events`` in small
batches (the gateway's own path, so its CPU is part of the load) on a fixed schedule; a batch
whose turn comes while too many are still in flight is counted as missed, never queued up
without bound. The events are the caller's (``BatchMaker``; the query bench's: the seeded
site's pages by popularity), times are "now".
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from bench.seed import SeedSpec, zipf_cumulative
from bench.stats import Latency

MAX_IN_FLIGHT = 64


# One ``/events`` body and how many of its events go to each site: made from the sender's
# random generator, the batch size and the time "now".
Batch = tuple[bytes, Counter[str]]
BatchMaker = Callable[[random.Random, int, int], Batch]


def seeded_site_batches(spec: SeedSpec) -> BatchMaker:
    """Batches of fresh events on the seeded large site, pages by its popularity."""
    cumulative = zipf_cumulative(spec.pages)
    total = cumulative[-1]

    def make(rng: random.Random, size: int, now_ms: int) -> Batch:
        events = [{"event_id": uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                   "site_id": spec.site,
                   "page_id": spec.page(min(bisect.bisect(cumulative, rng.random() * total),
                                            spec.pages - 1)),
                   "user_id": f"visitor-{rng.randrange(spec.visitors):06d}", "ts": now_ms}
                  for _ in range(size)]
        return orjson.dumps(events), Counter({spec.site: size})

    return make


@dataclass
class IngestStats:
    sent_events: int = 0
    accepted_events: int = 0
    errors: int = 0
    missed_batches: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    accepted_by_site: Counter[str] = field(default_factory=Counter)
    failed_by_site: Counter[str] = field(default_factory=Counter)  # maybe stored, maybe not

    def as_json(self, rate: int, batch: int) -> dict[str, object]:
        return {"target_events_per_s": rate, "batch": batch,
                "accepted_events_per_s": round(self.accepted_events / self.seconds, 1)
                if self.seconds else None,
                "sent_events": self.sent_events, "accepted_events": self.accepted_events,
                "errors": self.errors, "missed_batches": self.missed_batches,
                "seconds": round(self.seconds, 1),
                "request_latency": Latency.of(self.latencies_ms).as_dict()}


class SteadyIngest:
    """``async with SteadyIngest(...) as ingest``: sends until the block ends; ``stats``.
    Unseeded by default: a later run on the same stack must send new event ids, or every
    event would be a client retry, dropped by the aggregators instead of counted."""

    def __init__(self, url: str, batches: BatchMaker, rate: int, batch: int = 20,
                 seed: int | None = None) -> None:
        self._url = f"{url}/events"
        self._batches = batches
        self.rate, self.batch = rate, batch
        self._rng = random.Random(seed)
        self.stats = IngestStats()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> SteadyIngest:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.batch / self.rate
        in_flight: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            start = loop.time()
            sent = 0
            while not self._stop.is_set():
                due_at = start + sent * interval
                wait = due_at - loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=wait)
                        break
                    except TimeoutError:
                        pass
                sent += 1
                if len(in_flight) >= MAX_IN_FLIGHT:
                    self.stats.missed_batches += 1
                    continue
                body, sites = self._batches(self._rng, self.batch, int(time.time() * 1000))
                task = asyncio.create_task(self._post(http, body, sites, due_at))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            self.stats.seconds = loop.time() - start
            if in_flight:
                await asyncio.wait(set(in_flight), timeout=11)

    async def _post(self, http: aiohttp.ClientSession, body: bytes, sites: Counter[str],
                    due_at: float) -> None:
        self.stats.sent_events += self.batch
        try:
            async with http.post(self._url, data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                await response.read()
                ok = response.status == 202
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        if ok:
            self.stats.accepted_events += self.batch
            self.stats.accepted_by_site.update(sites)
            self.stats.latencies_ms.append((asyncio.get_running_loop().time() - due_at) * 1000)
        else:
            self.stats.errors += 1
            self.stats.failed_by_site.update(sites)
