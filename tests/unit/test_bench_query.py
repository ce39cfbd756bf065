"""The pure pieces of bench-query: the seed, the endpoints, the Redis slow-log summary
(the open-loop generator's are in test_bench_openloop.py)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from aggregator.counting.redis_sink import APPLY_SCRIPT
from bench.query import (
    QueryConfig,
    cpu_ms_per_request,
    endpoints,
    odd_minute_range,
    summary_rows,
)
from bench.redis_watch import SlowSummary, command_costs, command_name, script_names
from bench.seed import SeedSpec, big_site_events, seed_range, small_site_events, zipf_cumulative
from bench.settings import BenchSettingsError
from bench.steady import seeded_site_batches
from contracts.event import ValidationPolicy, validate_batch
from contracts.settings import Retention
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, datetime_to_ms
from query_api.routes import ENDPOINT_PARAMS
from query_api.tiling import retained, tile

SMALL = SeedSpec(pages=50, visitors=300, days=3, events=2_000, small_sites=3, small_events=4)
ANCHOR = 1_796_000_400_000 // HOUR_MS * HOUR_MS


# --- the seed ---

def test_the_seed_is_the_same_events_with_the_same_ids_every_time() -> None:
    first = list(big_site_events(SMALL, ANCHOR))
    assert first == list(big_site_events(SMALL, ANCHOR))
    assert len({e.event_id for e in first}) == SMALL.events
    assert first[7].event_id == f"{SMALL.site}-000000007"


def test_seed_events_lie_in_the_days_before_the_anchor_and_on_the_spec_s_pages() -> None:
    events = list(big_site_events(SMALL, ANCHOR))
    assert all(ANCHOR - SMALL.days * DAY_MS <= e.ts < ANCHOR for e in events)
    assert {e.site_id for e in events} == {SMALL.site}
    assert len({e.page_id for e in events}) <= SMALL.pages
    assert len({e.user_id for e in events}) <= SMALL.visitors


def test_page_popularity_falls_with_rank_like_zipf() -> None:
    views = Counter(e.page_id for e in big_site_events(SMALL, ANCHOR))
    ranked = [page for page, _ in views.most_common(3)]
    assert ranked[0] == SMALL.page(0)
    assert views[SMALL.page(0)] > 2 * views[SMALL.page(5)]
    assert zipf_cumulative(3) == pytest.approx([1, 1.5, 1 + 1 / 2 + 1 / 3])


def test_small_sites_each_get_their_events_with_ids_unique_per_site() -> None:
    events = list(small_site_events(SMALL, ANCHOR))
    per_site = Counter(e.site_id for e in events)
    assert per_site == {SMALL.small_site(i): SMALL.small_events for i in range(3)}
    assert len({e.event_id for e in events}) == len(events)  # unique across sites too


def test_a_seed_of_another_size_is_another_site() -> None:
    quick = SeedSpec.from_env({"BENCH_SEED_EVENTS": "100_000", "BENCH_SEED_PAGES": "1000"})
    assert (quick.events, quick.pages, quick.visitors) == (100_000, 1_000, 200_000)
    assert quick.site != SeedSpec().site
    assert len(SeedSpec().site) <= 64


@pytest.mark.parametrize("env", [{"BENCH_SEED_EVENTS": "many"}, {"BENCH_SEED_PAGES": "0"}])
def test_a_malformed_seed_size_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(BenchSettingsError):
        SeedSpec.from_env(env)


def test_the_seed_check_range_is_whole_days_and_hours_so_redis_answers_it_for_months() -> None:
    start, end = seed_range(SMALL, ANCHOR)
    assert start.endswith("T00:00:00Z") and end.endswith(":00:00Z")


# --- the endpoints ---

def test_the_odd_minute_range_mixes_day_hour_and_minute_tiles_all_still_in_redis() -> None:
    now = datetime_to_ms_of("2026-12-02T05:44:30")
    start, end = odd_minute_range(now)
    assert start % HOUR_MS == 17 * MINUTE_MS and (end // MINUTE_MS) % 60 == 31
    buckets = tile(start, end)
    assert {b.unit for b in buckets} == {"d", "h", "m"}
    assert all(retained(b, now, Retention()) for b in buckets)


def test_every_endpoint_uses_only_parameters_its_route_accepts() -> None:
    paths = endpoints(SeedSpec().site, SeedSpec().page(0), ANCHOR)
    assert len(paths) == 12
    for name, path in paths.items():
        parts = urlsplit(path)
        route = "/stats/pages/{page_id}" if parts.path.startswith("/stats/pages/") else parts.path
        names = {k for k, _ in parse_qsl(parts.query)}
        assert names <= ENDPOINT_PARAMS[route], name


def test_bench_query_endpoints_picks_named_endpoints_in_order_and_refuses_unknown() -> None:
    paths = endpoints("site", "page-00000", ANCHOR)
    assert QueryConfig.from_env({}).chosen(paths) == paths
    picked = QueryConfig.from_env(
        {"BENCH_QUERY_ENDPOINTS": "/stats/top, /stats period=7d"}).chosen(paths)
    assert list(picked) == ["/stats period=7d", "/stats/top"]
    assert picked["/stats/top"] == paths["/stats/top"]
    with pytest.raises(BenchSettingsError, match="/stats/nope"):
        QueryConfig.from_env({"BENCH_QUERY_ENDPOINTS": "/stats/top,/stats/nope"}).chosen(paths)


def test_cpu_per_request_is_cores_over_rate() -> None:
    assert cpu_ms_per_request(0.5, 250) == 2.0
    assert cpu_ms_per_request(0.5, 0) is None


def test_steady_ingest_batches_are_valid_events_of_the_seeded_site() -> None:
    rng = random.Random(1)
    body, sites = seeded_site_batches(SMALL)(rng, 20, ANCHOR)
    events = validate_batch(orjson.loads(body), ValidationPolicy(ANCHOR), lambda: "x")
    assert len(events) == 20 and {e.site_id for e in events} == {SMALL.site}
    assert sites == {SMALL.site: 20}


# --- Redis slow log ---

def test_scripts_in_the_slow_log_are_named_by_their_sha() -> None:
    sha = hashlib.sha1(APPLY_SCRIPT.encode()).hexdigest()
    assert command_name([b"EVALSHA", sha.encode(), b"3"], script_names()) \
        == "EVALSHA apply (aggregator)"
    assert command_name([b"zrange", b"k"], {}) == "ZRANGE"


def test_the_slow_summary_keeps_the_slowest_and_counts_those_above_1_ms() -> None:
    summary = SlowSummary({})
    summary.add([{"duration": 150, "command": [b"GET", b"k"]},
                 {"duration": 4200, "command": [b"HGETALL", b"k"]}])
    summary.add([{"duration": 900, "command": [b"GET", b"k"]}])
    out = summary.as_json()
    assert (out["slowest_us"], out["slowest_command"], out["above_1ms"]) == (4200, "HGETALL", 1)
    assert out["per_command_max_us"] == {"HGETALL": 4200, "GET": 900}


def test_command_costs_rank_commands_by_total_time() -> None:
    info = {"cmdstat_get": {"calls": 10, "usec": 50, "usec_per_call": 5.0},
            "cmdstat_evalsha": {"calls": 2, "usec": 9000, "usec_per_call": 4500.0}}
    assert [c["command"] for c in command_costs(info, {})] == ["EVALSHA", "GET"]


def test_the_summary_table_has_a_row_per_endpoint_and_condition() -> None:
    point = {"latency": {"p50_ms": 1.0, "p99_ms": 4.0, "p999_ms": 9.0}, "errors": 0}
    data = {"figures": [{"suite": "query", "value": 300.0, "ratio": 0.1,
                         "extra": {"endpoint": "/stats/top", "condition": "idle",
                                   "open_loop": {"25%": point, "50%": point, "75%": None},
                                   "redis_slowlog": {"slowest_us": 1200,
                                                     "slowest_command": "GET"},
                                   "query_cpu_ms_per_request": 2.5}}]}
    assert summary_rows(data) == [("/stats/top", "idle", "300", "10%", "1.0/4.0/9.0",
                                   "1.0/4.0/9.0", "-", "1,200 GET", "2.50")]


def datetime_to_ms_of(text: str) -> int:
    from datetime import UTC, datetime

    return datetime_to_ms(datetime.fromisoformat(text).replace(tzinfo=UTC))
