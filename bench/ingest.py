"""bench-ingest: single-event ``POST /track`` and 100-event ``POST /events`` through NGINX.

wrk at several concurrencies, each for ``BENCH_SECONDS``: requests/s, events/s, latency
percentiles, errors, and the cores each part of the stack used. /track is compared with a
trivial aiohttp handler behind NGINX (what the gateway costs above the framework); /events
with Kafka's own producer tool (how close batched ingestion gets to the log's limit).
"""

from __future__ import annotations

from bench import wrk
from bench.cpu import busiest
from bench.drain import wait_for_stack
from bench.limits import AIOHTTP_VIA_NGINX, KAFKA_PRODUCER, NGINX_STATIC
from bench.progress import say
from bench.results import Figure, Run
from bench.settings import BenchSettings

SUITE = "ingest"
EVENTS_PER_BATCH = 100  # what bench/wrk/events100.lua sends


async def run_suite(s: BenchSettings, run: Run) -> None:
    for connections in s.track_connections:
        say(SUITE, f"POST /track, {connections} connections, {s.seconds:g}s")
        result, cpu = await wrk.run_measured(f"{s.http_url}/track", "track.lua", connections,
                                             s.seconds, s.wrk_threads)
        run.add(Figure(SUITE, f"/track c={connections}", result.rps, "events/s",
                       result.latency, result.errors, AIOHTTP_VIA_NGINX,
                       {"requests_per_s": result.rps, "connections": connections,
                        "requests": result.requests, "cpu_cores": cpu,
                        "wrk_cpu_cores": result.cpu_cores, "busiest": busiest(cpu),
                        "ratio_to_nginx_204": run.ratio_to(result.rps, NGINX_STATIC)}))
        say(SUITE, f"  {result.rps:,.0f} req/s, p99 {result.latency.p99:.1f} ms, "
                   f"{result.errors} errors; busiest: {busiest(cpu)}")
    for connections in s.events_connections:
        say(SUITE, f"POST /events x{EVENTS_PER_BATCH}, {connections} connections, "
                   f"{s.seconds:g}s")
        result, cpu = await wrk.run_measured(f"{s.http_url}/events", "events100.lua",
                                             connections, s.seconds, s.wrk_threads)
        events = result.rps * EVENTS_PER_BATCH
        run.add(Figure(SUITE, f"/events x100 c={connections}", events, "events/s",
                       result.latency, result.errors, KAFKA_PRODUCER,
                       {"requests_per_s": result.rps, "connections": connections,
                        "requests": result.requests, "cpu_cores": cpu,
                        "wrk_cpu_cores": result.cpu_cores, "busiest": busiest(cpu)}))
        say(SUITE, f"  {events:,.0f} events/s ({result.rps:,.0f} req/s), "
                   f"p99 {result.latency.p99:.1f} ms, {result.errors} errors; "
                   f"busiest: {busiest(cpu)}")
    drained, seconds = await wait_for_stack(s, SUITE)
    if drained and seconds > 1:
        run.add(Figure(SUITE, "stack aggregators catching up", drained / seconds, "events/s",
                       extra={"records": drained, "seconds": round(seconds, 1),
                              "aggregators": "the stack's (2)"}))
