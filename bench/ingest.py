"""bench-ingest: single-event ``POST /track`` and 100-event ``POST /events`` through NGINX.

wrk at several concurrencies, each for ``BENCH_SECONDS``: requests/s, events/s, latency
percentiles, errors, and the cores each part of the stack used. /track is compared with a
trivial aiohttp handler behind NGINX (what the gateway costs above the framework; issue 14's
goal: 60%); /events with Kafka's own producer tool (how close batched ingestion gets to the
log's limit; goal: 50%, or 100,000 events/s). Each kind's peak over the concurrencies is a
figure of its own, flagged when it was the highest concurrency tried (the peak may lie
beyond). Every measurement sends to a site of its own (``bench-ingest-<run>-...``) and
counts its 202s (``wrk/count.lua``), so the run ends with the exactly-once check: once the
stack's aggregators caught up, each site's /stats total and MongoDB documents must equal
the events acknowledged (within the requests left unanswered when wrk stopped).
"""

from __future__ import annotations

import asyncio
import uuid

from bench import exact_check, wrk
from bench.cpu import busiest
from bench.drain import wait_for_stack
from bench.exactness import Expected
from bench.limits import AIOHTTP_VIA_NGINX, KAFKA_PRODUCER, NGINX_STATIC
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import BenchSettings
from bench.sites import register_sites
from bench.stats import peak, rate

SUITE = "ingest"
EVENTS_PER_BATCH = 100  # what bench/wrk/events100.lua sends
RECOVERY_S = 3.0  # > the front door's fail_timeout (infra/stack.py: 2 s)
TRACK_GOAL = {"min_ratio": 0.6, "text": ">= 60% of the trivial handler behind NGINX"}
EVENTS_GOAL = {"min_ratio": 0.5, "or_min_value": 100_000,
               "text": ">= 50% of Kafka's producer tool, or 100,000 events/s"}


async def _measure(s: BenchSettings, run: Run, path: str, script: str, connections: int,
                   per_request: int, site: str, limit: str) -> tuple[float, Expected]:
    await register_sites(s, site)
    result, cpu = await wrk.run_measured(f"{s.http_url}{path}", script, connections,
                                         s.seconds, s.wrk_threads, site=site, count=True)
    accepted = result.accepted if result.accepted >= 0 else result.ok_requests
    events = rate(accepted * per_request, result.seconds)
    label = "/track" if per_request == 1 else f"/events x{per_request}"
    extra: dict[str, object] = {
        "requests_per_s": rate(accepted, result.seconds), "connections": connections,
        "requests": result.requests, "accepted_requests": accepted, "sent": result.sent,
        "unanswered": result.unanswered, "site": site, "cpu_cores": cpu,
        "wrk_cpu_cores": result.cpu_cores, "busiest": busiest(cpu)}
    if per_request == 1:
        extra["ratio_to_nginx_204"] = run.ratio_to(events, NGINX_STATIC)
    run.add(Figure(SUITE, f"{label} c={connections}", events, "events/s", result.latency,
                   result.errors, limit, extra))
    say(SUITE, f"  {events:,.0f} events/s ({extra['requests_per_s']:,.0f} req/s), p99 "
               f"{result.latency.p99:.1f} ms, {result.errors} errors, {result.unanswered} "
               f"unanswered at the end; wrk {result.cpu_cores:.2f} cores; busiest: "
               f"{busiest(cpu)}")
    if result.errors:
        # NGINX marks a gateway that timed out as failed for fail_timeout (2 s) and answers
        # 502 at once meanwhile: the next measurement must not start inside that window
        say(SUITE, f"  errors: waiting {RECOVERY_S:g}s for NGINX to use every gateway again")
        await asyncio.sleep(RECOVERY_S)
    return events, Expected(site, accepted * per_request, result.unanswered * per_request)


def _add_peak(run: Run, label: str, points: list[tuple[int, float]], limit: str,
              goal: dict[str, object], variable: str) -> None:
    best = peak(points)
    if best is None:
        return
    run.add(Figure(SUITE, f"{label} peak (c={best.concurrency})", best.value, "events/s",
                   limit=limit, extra={"goal": goal, "concurrency": best.concurrency,
                                       "at_edge": best.at_edge,
                                       "points": dict(points)}))
    if best.at_edge:
        run.notes.append(f"ingest: {label} was still rising at the highest concurrency "
                         f"tried (c={max(c for c, _ in points)}): its peak may lie beyond "
                         f"({variable} for more)")


async def run_suite(s: BenchSettings, run: Run) -> None:
    tag = uuid.uuid4().hex[:8]
    expected: list[Expected] = []
    track: list[tuple[int, float]] = []
    for connections in s.track_connections:
        say(SUITE, f"POST /track, {connections} connections, {s.seconds:g}s")
        events, exp = await _measure(s, run, "/track", "track.lua", connections, 1,
                                     f"bench-ingest-{tag}-track-c{connections}",
                                     AIOHTTP_VIA_NGINX)
        track.append((connections, events))
        expected.append(exp)
    batched: list[tuple[int, float]] = []
    for connections in s.events_connections:
        say(SUITE, f"POST /events x{EVENTS_PER_BATCH}, {connections} connections, "
                   f"{s.seconds:g}s")
        events, exp = await _measure(s, run, "/events", "events100.lua", connections,
                                     EVENTS_PER_BATCH,
                                     f"bench-ingest-{tag}-events-c{connections}",
                                     KAFKA_PRODUCER)
        batched.append((connections, events))
        expected.append(exp)
    _add_peak(run, "/track", track, AIOHTTP_VIA_NGINX, TRACK_GOAL, "BENCH_TRACK_CONNECTIONS")
    _add_peak(run, f"/events x{EVENTS_PER_BATCH}", batched, KAFKA_PRODUCER, EVENTS_GOAL,
              "BENCH_EVENTS_CONNECTIONS")
    drained, seconds = await wait_for_stack(s, SUITE)
    if drained and seconds > 1:
        run.add(Figure(SUITE, "stack aggregators catching up", drained / seconds, "events/s",
                       extra={"records": drained, "seconds": round(seconds, 1),
                              "aggregators": "the stack's"}))
    await exact_check.verify(s, run, SUITE, expected, s.mongo_db)
