"""The chaos load: a steady, open-loop stream of valid events through NGINX, sent by a
well-behaved client.

Why open-loop: a fault must not slow the load down (a closed loop would send less exactly
when the stack struggles, and hide the backlog the stack has to catch up with). Events are
created on a fixed schedule (``rate`` a second), half as ``POST /track`` (one event), half as
``POST /events`` (2-10 events), each with the client's own ``event_id``, to a few registered
sites, from small sets of visitors and of pages; a page id names the phase the event was
first sent in (``page_of``), so each phase can be counted on its own.

The client retries what the README says to retry: on 429, 503, a connection error or a
timeout it sends the same body again (same event ids) after ``Retry-After`` (capped) or an
exponential backoff; a send lost on a kept-alive connection the server had closed goes
again at once on a new connection, as HTTP clients do (``ledger.STALE_CONNECTION``);
another 5xx is retried too but recorded as an error; any other 4xx is final (the load is
valid, so the run fails). Every attempt goes to the ``Ledger``. At the end (``drain``)
nothing new is sent and what is pending is retried until acknowledged or a deadline;
whatever is still unanswered then stays ambiguous in the ledger, never dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import aiohttp
import orjson

from bench.chaos.ledger import NO_ANSWER, EventRecord, Ledger, Outcome, backoff_s


class _Reuse:
    """Per send: whether aiohttp took a pooled connection for it (``trace_request_ctx``)."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(session: object, context: SimpleNamespace, params: object) -> None:
    context.trace_request_ctx.reused = True

PAGES_PER_PHASE = 4
VISITORS_PER_SITE = 40
TRACK_SHARE = 0.5  # of requests; the rest are /events batches
BATCH_SIZES = range(2, 11)
BACKOFF_CAP_S = 5.0
CONNECTIONS = 256


def page_of(phase_index: int, phase: str, k: int) -> str:
    """A page id that names its phase (its index first, so pages sort by phase)."""
    return f"/{phase_index:02d}-{phase}/p{k}"


class ChaosLoad:
    """``start()`` begins sending; ``phase`` tags the events created from then on;
    ``drain()`` stops creating events and settles the pending ones. Runs in the caller's
    event loop; never blocks it."""

    def __init__(self, http_url: str, sites: Sequence[str], ledger: Ledger, rate: float,
                 seed: int | None = None, request_timeout_s: float = 10.0) -> None:
        self._url = http_url.rstrip("/")
        self._sites = list(sites)
        self._ledger = ledger
        self.rate = rate
        self._rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=3,
                                              sock_read=request_timeout_s)
        self._phase = ""
        self._pages: list[str] = []
        self._stop = asyncio.Event()
        self._give_up = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def phase(self) -> str:
        return self._phase

    def set_phase(self, phase: str) -> None:
        """Events created from now on belong to ``phase`` (opened in the ledger)."""
        self._ledger.open_phase(phase)
        index = len(self._ledger.phases) - 1
        self._pages = [page_of(index, phase, k) for k in range(PAGES_PER_PHASE)]
        self._phase = phase

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        if not self._phase:
            raise RuntimeError("set_phase before start")
        self.open()
        self._scheduler = asyncio.create_task(self._schedule())

    def open(self) -> None:
        """The client's connection pool; ``start`` opens it (and ``drain`` closes it)."""
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        reuse = aiohttp.TraceConfig()
        reuse.on_connection_reuseconn.append(_on_reuse)
        self._http = aiohttp.ClientSession(timeout=self._timeout, connector=connector,
                                           trace_configs=[reuse])

    async def drain(self, timeout_s: float) -> None:
        """Stop creating events; retry the pending ones until each is answered for good or
        ``timeout_s`` passed; then cancel the rest (they stay ambiguous)."""
        self._stop.set()
        if self._scheduler is not None:
            await self._scheduler
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        self._give_up.set()
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=5)
        if self._http is not None:
            await self._http.close()

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        created = 0
        while not self._stop.is_set():
            wait = start + created / self.rate - loop.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                    break
                except TimeoutError:
                    pass
            records, path = self._next_request()
            created += len(records)
            self._ledger.add(records)
            task = asyncio.create_task(self.send(records, path))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _next_request(self) -> tuple[list[EventRecord], str]:
        rng = self._rng
        track = rng.random() < TRACK_SHARE
        size = 1 if track else rng.choice(BATCH_SIZES)
        now_ms = int(time.time() * 1000)
        records = []
        for _ in range(size):
            site = rng.choice(self._sites)
            records.append(EventRecord(
                event_id=uuid.UUID(int=rng.getrandbits(128), version=4).hex, site=site,
                page=rng.choice(self._pages), user=f"v{rng.randrange(VISITORS_PER_SITE):03d}",
                ts=now_ms, phase=self._phase))
        return records, "/track" if track else "/events"

    @staticmethod
    def _body(records: list[EventRecord], path: str) -> bytes:
        events = [{"event_id": r.event_id, "site_id": r.site, "page_id": r.page,
                   "user_id": r.user, "ts": r.ts} for r in records]
        return orjson.dumps(events[0] if path == "/track" else events)

    async def send(self, records: list[EventRecord], path: str) -> None:
        """One request, sent until answered for good (or given up at the end of a drain)."""
        assert self._http is not None
        body = self._body(records, path)
        headers = {"Content-Type": "application/json"}
        attempt = 0
        while True:
            retry_after = None
            sent_on = _Reuse()
            status: int | None = None
            try:
                async with self._http.post(self._url + path, data=body, headers=headers,
                                           trace_request_ctx=sent_on) as response:
                    status = response.status
                    await response.read()
                    label = str(status)
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError:  # aiohttp's read timeout is one too
                label = NO_ANSWER[1]
            except (aiohttp.ClientError, OSError):
                if sent_on.reused and status is None and not self._give_up.is_set():
                    self._ledger.reconnected(records, self._phase)
                    continue
                label = NO_ANSWER[0]
            outcome = self._ledger.answered(records, label, attempt, self._phase)
            if outcome in (Outcome.ACKED, Outcome.REFUSED) or self._give_up.is_set():
                return
            attempt += 1
            await asyncio.sleep(backoff_s(attempt, retry_after, BACKOFF_CAP_S,
                                          self._rng.random()))
