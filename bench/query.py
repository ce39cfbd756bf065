"""bench-query: every stats endpoint on a large seeded site, idle and during steady ingest.

The data (``bench.seed``): one site with 10,000 pages, 200,000 visitors and 30 days of
history, and 1,000 small sites, seeded once and reused. For each endpoint, in each condition:

1. the maximum rate, closed-loop: wrk with ``CONNECTIONS`` connections for
   ``BENCH_SECONDS``, compared with the trivial aiohttp handler behind NGINX of the same run;
2. latency open-loop (``bench.openloop``, vegeta) at 25%, 50% and 75% of that maximum:
   requests at fixed times, latency from the scheduled time (p50/p99/p99.9);
3. Redis meanwhile (``bench.redis_watch``): the slowest command or script in SLOWLOG and
   the costliest commands; and the query API's CPU per request during the wrk run.

"During ingest" repeats it all while ``bench.steady`` sends a fixed 2,000 events/s
(``BENCH_QUERY_INGEST_RATE``) through the gateway to the large site.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from bench import openloop, wrk
from bench.cpu import CpuWindow, busiest, stack_groups
from bench.drain import wait_for_redis_answers, wait_for_stack
from bench.kafka import GroupLag
from bench.limits import AIOHTTP_VIA_NGINX, NGINX_STATIC
from bench.progress import say
from bench.redis_watch import RedisWatch
from bench.results import Figure, Run
from bench.seed import SeedInfo, SeedSpec, ensure_seeded, seed_timeout_s
from bench.settings import BenchSettings, BenchSettingsError
from bench.sites import register_sites
from bench.steady import SteadyIngest, seeded_site_batches
from bench.table import number, percent, render
from bench.vegeta import ensure_vegeta
from contracts.timebuckets import HOUR_MS, MINUTE_MS, iso_z

SUITE = "query"
CONNECTIONS = 32
# The slowest endpoints take seconds per answer with 32 connections queued on one Redis:
# wrk's default 5 s would count them all as errors and measure no rate at all.
WRK_TIMEOUT_S = 60
QUIET_CORES = 0.1
MIN_ANSWERS = 10  # fewer from wrk's 32 connections: measured again with one
FRACTIONS = (0.25, 0.5, 0.75)
INGEST_RATE = 2_000
INGEST_BATCH = 20


def odd_minute_range(now_ms: int) -> tuple[int, int]:
    """``from``/``to`` at odd minutes, mixing day, hour and minute tiles, all still in Redis:
    from 17 minutes past an hour about 45 hours ago (minute buckets live 48 h) to 13 minutes
    before the current minute. It holds a whole UTC day unless "now" is after about 20:40
    UTC, when only hour and minute tiles fit."""
    start = (now_ms - 46 * HOUR_MS) // HOUR_MS * HOUR_MS + HOUR_MS + 17 * MINUTE_MS
    end = now_ms // MINUTE_MS * MINUTE_MS - 13 * MINUTE_MS
    return start, end


def endpoints(site: str, page: str, now_ms: int) -> dict[str, str]:
    """Name -> path and query of every endpoint measured (parameters as in
    ``query_api.routes.ENDPOINT_PARAMS``)."""
    start, end = odd_minute_range(now_ms)

    def q(**params: str) -> str:
        return urlencode({"site_id": site, **params})

    return {
        "/stats all-time limit=100": f"/stats?{q(limit='100')}",
        "/stats period=7d": f"/stats?{q(period='7d')}",
        "/stats period=30d": f"/stats?{q(period='30d')}",
        "/stats from/to odd minutes": f"/stats?{q(**{'from': iso_z(start), 'to': iso_z(end)})}",
        "/stats/top": f"/stats/top?{q(limit='10')}",
        "/stats/timeseries 24h by hour": f"/stats/timeseries?{q(period='24h', interval='hour')}",
        "/stats/timeseries 30d by day": f"/stats/timeseries?{q(period='30d', interval='day')}",
        "/stats/pages/{id} 30d": f"/stats/pages/{quote(page, safe='')}?{q(period='30d')}",
        "/stats/realtime": f"/stats/realtime?{q()}",
        "/stats/compare 7d": f"/stats/compare?{q(period='7d')}",
        "/stats/breakdown source 7d": f"/stats/breakdown?{q(dimension='source', period='7d')}",
        "/stats/breakdown browser 30d":
            f"/stats/breakdown?{q(dimension='browser', period='30d')}",
    }


def cpu_ms_per_request(cores: float, rps: float) -> float | None:
    """Milliseconds of CPU per request from cores busy at a request rate."""
    return None if rps <= 0 else cores / rps * 1000


@dataclass(frozen=True)
class QueryConfig:
    ingest_rate: int = INGEST_RATE
    only: tuple[str, ...] = ()  # endpoint names to measure (empty: all), for an A/B of a few

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueryConfig:
        only = tuple(n.strip() for n in env.get("BENCH_QUERY_ENDPOINTS", "").split(",")
                     if n.strip())
        return cls(int(env.get("BENCH_QUERY_INGEST_RATE", "") or INGEST_RATE), only)

    def chosen(self, paths: Mapping[str, str]) -> dict[str, str]:
        """The endpoints ``BENCH_QUERY_ENDPOINTS`` names, in the usual order."""
        unknown = [n for n in self.only if n not in paths]
        if unknown:
            raise BenchSettingsError(f"BENCH_QUERY_ENDPOINTS names no endpoint {unknown}; "
                                     f"the endpoints are: {', '.join(paths)}")
        return {n: p for n, p in paths.items() if not self.only or n in self.only}


async def _sources(s: BenchSettings, paths: Mapping[str, str]) -> dict[str, str]:
    """Status and ``X-Stats-Source`` of each endpoint: the figures must be Redis's."""
    out = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for name, path in paths.items():
            async with http.get(f"{s.http_url}{path}", headers=s.stats_headers()) as response:
                await response.read()
                out[name] = f"{response.status} {response.headers.get('X-Stats-Source', '?')}"
    return out


async def settle(groups: tuple[str, ...], suite: str = SUITE, limit_s: float = 60.0) -> None:
    """Until ``groups`` of the stack use under ``QUIET_CORES`` together (at most ``limit_s``):
    requests a client gave up on still run in the query API and Redis, and must not be
    counted against the next endpoint."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        window = CpuWindow({name: pids for name, pids in stack_groups().items()
                            if name in groups})
        window.start()
        await asyncio.sleep(1)
        busy = sum(window.stop().values())
        if busy < QUIET_CORES:
            return
    say(suite, f"  {'+'.join(groups)} still busy after {limit_s:g}s; going on")


async def _measure_one(s: BenchSettings, run: Run, cfg: QueryConfig, name: str, path: str,
                       condition: str, answered: str) -> None:
    url = f"{s.http_url}{path}"
    await settle(("query", "redis") if condition == "idle" else ("query",))
    say(SUITE, f"{name} ({condition}): max rate, wrk -c{CONNECTIONS}, {s.seconds:g}s")
    async with RedisWatch(s.redis_url) as watch:
        connections = CONNECTIONS
        result, cpu = await wrk.run_measured(url, "get.lua", connections, s.seconds,
                                             s.wrk_threads, s.stats_headers(), WRK_TIMEOUT_S)
        if result.ok_requests < MIN_ANSWERS:
            # so slow that 32 requests in parallel finish none within the run (each one's
            # steps queue behind the others' on Redis): its rate is one connection's
            connections = 1
            say(SUITE, f"  only {result.ok_requests} answers with {CONNECTIONS} connections;"
                       f" again with 1, {s.seconds:g}s")
            await settle(("query",))
            result, cpu = await wrk.run_measured(url, "get.lua", connections, s.seconds, 1,
                                                 s.stats_headers(), WRK_TIMEOUT_S)
        points: dict[str, Any] = {}
        for fraction in FRACTIONS:
            rate = result.rps * fraction
            await settle(("query",))
            if rate * s.seconds < 1:
                points[f"{fraction:.0%}"] = None
                continue
            point = await openloop.run(url, rate, s.seconds, s.stats_headers())
            points[f"{fraction:.0%}"] = point.as_json()
            lat = point.latency
            say(SUITE, f"  open-loop {fraction:.0%} = {rate:,.0f} req/s: p50 {lat.p50:.1f} "
                       f"p99 {lat.p99:.1f} p99.9 {lat.p999:.1f} ms, {point.errors} errors, "
                       f"generator late by up to {point.max_send_lag_ms:.0f} ms")
    slow = watch.summary.as_json()
    query_ms = cpu_ms_per_request(cpu.get("query", 0.0), result.rps)
    redis_ms = cpu_ms_per_request(cpu.get("redis", 0.0), result.rps)
    run.add(Figure(SUITE, f"{name} {condition}", result.rps, "req/s", result.latency,
                   result.errors, AIOHTTP_VIA_NGINX,
                   {"path": path, "condition": condition, "endpoint": name,
                    "connections": connections, "answered": answered,
                    "latency_is": "closed-loop wrk at the maximum rate; open-loop in 'open_loop'",
                    "open_loop": points, "redis_slowlog": slow,
                    "redis_costliest": watch.costs,
                    "redis_latency_percentiles_us": watch.latency_percentiles,
                    "query_cpu_ms_per_request": query_ms, "redis_cpu_ms_per_request": redis_ms,
                    "cpu_cores": cpu, "wrk_cpu_cores": result.cpu_cores,
                    "busiest": busiest(cpu),
                    "ratio_to_nginx_204": run.ratio_to(result.rps, NGINX_STATIC)}))
    share = percent(run.ratio_to(result.rps, AIOHTTP_VIA_NGINX))
    say(SUITE, f"  max {result.rps:,.0f} req/s ({share} of trivial), {result.errors} "
               f"errors; slowest Redis "
               f"{slow['slowest_us']:,} us ({slow['slowest_command']}); query CPU "
               f"{number(query_ms, 2)} ms/request; busiest: {busiest(cpu)}")


async def _measure(s: BenchSettings, run: Run, cfg: QueryConfig, paths: Mapping[str, str],
                   condition: str, sources: Mapping[str, str]) -> None:
    for name, path in paths.items():
        await _measure_one(s, run, cfg, name, path, condition, sources[name])


async def run_suite(s: BenchSettings, run: Run) -> None:
    if not await wait_for_redis_answers(s, SUITE):
        run.notes.append("query: the query API did not answer from Redis; not measured")
        return
    spec = SeedSpec.from_env(os.environ)
    cfg = QueryConfig.from_env(os.environ)
    cfg.chosen(endpoints(spec.site, spec.page(0), 0))  # a misspelt name fails before the seed
    await asyncio.to_thread(ensure_vegeta)  # the open-loop generator; built the first time
    info: SeedInfo = await ensure_seeded(s, spec, seed_timeout_s(os.environ))
    await wait_for_stack(s, SUITE)
    paths = cfg.chosen(endpoints(spec.site, spec.page(0), int(time.time() * 1000)))
    sources = await _sources(s, paths)
    run.settings["query_seed"] = info.as_json()
    run.settings["query_endpoints"] = dict(paths)
    age_h = (time.time() * 1000 - info.anchor_ms) / HOUR_MS
    run.notes.append(f"query: site {spec.site} ({spec.pages:,} pages, {spec.visitors:,} "
                     f"visitors, {spec.events:,} events over {spec.days} days to "
                     f"{iso_z(info.anchor_ms)}, {age_h:.1f} h before the run; "
                     f"{spec.small_sites:,} small sites of {spec.small_events} events); "
                     f"{'seeded in this run' if info.seeded_now else 'seed reused'}")
    if age_h > 40:
        run.notes.append("query: the seed is older than 40 h, so the minute buckets of the "
                         "odd-minute range hold little of it (re-seed: delete "
                         ".run/bench-seed.json and use another BENCH_SEED_EVENTS)")
    await _measure(s, run, cfg, paths, "idle", sources)
    say(SUITE, f"background load: a steady {cfg.ingest_rate:,} events/s to POST /events "
               f"({INGEST_BATCH} a request)")
    await register_sites(s, spec.site)  # seeded through Kafka; the load goes via the gateways
    async with SteadyIngest(s.http_url, seeded_site_batches(spec), cfg.ingest_rate,
                            INGEST_BATCH) as ingest, \
            GroupLag(s.kafka_bootstrap, s.topic, s.aggregator_group) as group:
        await asyncio.sleep(2)
        await _measure(s, run, cfg, paths, "during ingest", sources)
        behind = await group.lag()
    stats = ingest.stats.as_json(cfg.ingest_rate, INGEST_BATCH)
    run.settings["query_ingest"] = stats
    run.notes.append(f"query 'during ingest': {stats['accepted_events_per_s']} events/s "
                     f"accepted of {cfg.ingest_rate:,} scheduled, {stats['errors']} failed and "
                     f"{stats['missed_batches']} missed batches; the aggregators were "
                     f"{behind:,} records behind at the end")
    drained, took = await wait_for_stack(s, SUITE)
    run.notes.append(f"query: after the ingest the aggregators worked off {drained:,} "
                     f"records in {took:.0f}s")


def _cell(point: dict[str, Any] | None) -> str:
    if not point:
        return "-"
    lat = point["latency"]
    text = f"{number(lat['p50_ms'], 1)}/{number(lat['p99_ms'], 1)}/{number(lat['p999_ms'], 1)}"
    return text + (f" ({point['errors']} err)" if point["errors"] else "")


SUMMARY_HEADERS = ("endpoint", "condition", "max req/s", "of trivial",
                   "p50/p99/p99.9 ms @25%", "@50%", "@75%", "slowest Redis us",
                   "query CPU ms/req")


def summary_rows(data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per endpoint and condition from a results document."""
    out: list[tuple[str, ...]] = []
    for f in data.get("figures", []):
        extra = f.get("extra") or {}
        if f.get("suite") != SUITE or "open_loop" not in extra:
            continue
        points = extra["open_loop"]
        slow = extra.get("redis_slowlog") or {}
        out.append((str(extra["endpoint"]), str(extra["condition"]), number(f["value"]),
                    percent(f.get("ratio")), _cell(points.get("25%")), _cell(points.get("50%")),
                    _cell(points.get("75%")),
                    f"{number(slow.get('slowest_us'))} {slow.get('slowest_command', '')}",
                    number(extra.get("query_cpu_ms_per_request"), 2)))
    return out


def summary_table(data: Mapping[str, Any]) -> str:
    rows = summary_rows(data)
    return render(rows, SUMMARY_HEADERS) if rows else ""
