"""Issue 18's capacity model: each formula, which results it reads, and what it says.

The results files are small fixtures written to a temporary directory in the shape
``bench.results`` saves (only the fields the model reads)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import capacity
from bench.capacity_inputs import (
    KAFKA_ASSUMED,
    MONGO_ASSUMED,
    MissingMeasurement,
    cpu_sample,
    drain,
    gateway_costs,
    inputs,
    redis_memory,
    stored_bytes,
    sustained,
)
from bench.capacity_model import (
    DENSE_HLL_BYTES,
    CpuSample,
    Load,
    RedisMemory,
    Sustained,
    aggregators_needed,
    bucket_bytes,
    check_machine,
    cores_needed,
    distinct,
    partitions_needed,
    per_day,
    plan,
    redis_plan,
)
from contracts.settings import Retention

Doc = dict[str, Any]
# At 2,000 events/s: 1.6 cores in the pipeline, 0.2 in what only the benchmark runs.
PIPELINE = {"gateway": 0.2, "nginx": 0.02, "kafka": 0.18, "aggregator": 0.4, "redis": 0.2,
            "ferretdb": 0.3, "postgres": 0.3}
BENCH_ONLY = {"query": 0.1}


def step(rate: int, sustained: bool, cores: dict[str, float] | None = None,
         label: str = "") -> Doc:
    verdict = label or ("sustained" if sustained else "not sustained")
    return {"suite": "e2e", "name": f"freshness @ {rate:,} ev/s ({verdict})", "value": 100.0,
            "unit": "ms p99",
            "extra": {"achieved_rate": float(rate), "sustained": sustained,
                      "generator_cpu_cores": 0.02, "python_cpu_cores": 0.08,
                      "cpu_cores": cores or {**PIPELINE, **BENCH_ONLY}}}


def highest(rate: int, tried: list[list[Any]]) -> Doc:
    return {"suite": "e2e", "name": "highest sustained rate", "value": float(rate),
            "unit": "events/s", "extra": {"tried": tried}}


INGEST = [
    {"suite": "ingest", "name": "/events x100 c=64", "value": 20_000.0,
     "extra": {"requests_per_s": 200.0, "cpu_cores": {"gateway": 1.0, "nginx": 0.04}}},
    {"suite": "ingest", "name": "/track c=256", "value": 1_000.0,
     "extra": {"requests_per_s": 1_000.0, "cpu_cores": {"gateway": 0.5, "nginx": 0.1}}},
    {"suite": "ingest", "name": "/track peak (c=256)", "value": 1_000.0,
     "extra": {"concurrency": 256}},
    {"suite": "ingest", "name": "/events x100 peak (c=64)", "value": 20_000.0,
     "extra": {"concurrency": 64}},
]


def drain_figure(value: float) -> list[Doc]:
    return [{"suite": "aggregator", "name": "drain, 1 aggregator, tracker events (1 writer)",
             "value": value / 2},
            {"suite": "aggregator", "name": "drain, 1 aggregator (1 writer)", "value": value}]


def usage(aggregate: str, unit: str, keys: int, per_key: float, entries: int | None = None
          ) -> dict[str, str]:
    return {"aggregate": aggregate, "unit": unit, "keys": f"{keys:,}",
            "bytes": f"{round(keys * per_key):,}",
            "entries": "" if entries is None else f"{entries:,}"}


# The soak: 300,000 events, 100,000 visitors, 300 sites; 500,000 page-and-bucket entries in
# the page facts (35 B each), 268,400 in leaderboards (20 B each); a few promoted pages.
SOAK_ROWS = [usage("pf", "m", 1_800, 250_000 * 35 / 1_800, 250_000),
             usage("pf", "all time", 19_200, 250_000 * 35 / 19_200, 250_000),
             usage("top", "m", 1_800, 100 * 20, 180_000),
             usage("top", "all time", 300, 128 * 20, 38_400),
             usage("uvp", "all time", 1_000, 400),
             usage("uv", "m", 1_800, 700), usage("uv", "all time", 300, 2_550),
             usage("views", "m", 1_800, 88), usage("views", "all time", 300, 88),
             usage("offsets", "(other key)", 300, 152)]
SOAK_KEYS_BYTES = (250_000 * 35 * 2 + 1_800 * 2_000 + 300 * 2_560 + 400_000 + 1_800 * 700
                   + 765_000 + 2_100 * 88 + 45_600)


def soak(stores: dict[str, Any] | None = None) -> Doc:
    return {"suite": "memory", "name": "Redis growth per event (soak)",
            "value": SOAK_KEYS_BYTES * 1.1 / 300_000, "unit": "B/event",
            "extra": {"events_counted": 300_000, "visitors": 100_000, "sites": 300,
                      "soak_keys_bytes": SOAK_KEYS_BYTES,
                      "by_aggregate": [*SOAK_ROWS, {"aggregate": "all", "unit": "",
                                                    "keys": "", "bytes": ""}],
                      **(stores or {})}}


def write(directory: Path, stamp: str, suites: str, figures: list[Doc]) -> str:
    name = f"bench-{stamp}-{suites}.json"
    started = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:00Z"
    (directory / name).write_text(json.dumps({
        "started_at": started, "suites": suites.split("-"), "machine": {"cores": 2},
        "figures": figures}))
    return name


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A full run, then a newer aggregator run and a memory soak."""
    write(tmp_path, "20261201T0000Z", "e2e-ingest-aggregator",
          [step(1000, True), step(2000, True), step(4000, False), step(3000, False),
           highest(2000, [[1000, True], [2000, True], [4000, False], [3000, False],
                          [2500, False]]),
           step(1000, True, label="half the highest sustained"), *INGEST, *drain_figure(3000)])
    write(tmp_path, "20261202T0000Z", "aggregator", drain_figure(2500))
    write(tmp_path, "20261203T0000Z", "memory", [soak()])
    return tmp_path


def redis_of(**sizes: float) -> RedisMemory:
    base = {"counter_bytes": 0.0, "fact_bytes": 0.0, "top_entry_bytes": 0.0,
            "hll_base_bytes": 0.0,
            "hll_bytes_per_visitor": 0.0, "site_bytes": 0.0, "overhead": 1.0,
            "per_event": 0.0}
    return RedisMemory(**{**base, **sizes}, file="f", date="d")


# The formulas


def test_a_stages_cores_are_rate_times_its_cost_over_the_headroom() -> None:
    assert cores_needed(100_000, 85, 0.6) == pytest.approx(100_000 * 85e-6 / 0.6)
    assert cores_needed(1_000, 1_000, 1.0) == pytest.approx(1.0)


def test_aggregators_are_the_rate_over_one_aggregators_drain_at_the_headroom() -> None:
    assert aggregators_needed(100_000, 3_205, 0.6) == 53  # 52.005... rounds up
    assert aggregators_needed(6_000, 1_000, 0.6) == 10
    assert aggregators_needed(10, 1_000, 0.6) == 1


def test_partitions_are_the_next_multiple_of_six_with_two_per_aggregator() -> None:
    assert partitions_needed(53) == 108
    assert partitions_needed(1) == 6
    assert partitions_needed(3) == 6
    assert partitions_needed(4) == 12


def test_disk_a_day_is_rate_times_a_day_times_bytes_times_copies() -> None:
    assert per_day(100_000, 200, 3) == 100_000 * 86_400 * 200 * 3
    assert per_day(1, 1_000) == 86_400_000


def test_distinct_pages_in_a_bucket_stay_below_both_views_and_pages() -> None:
    assert distinct(10, 1_000_000) == pytest.approx(10, rel=1e-4)  # each view a new page
    assert distinct(1_000_000, 40) == pytest.approx(40)  # every page seen
    assert distinct(0, 40) == 0 and distinct(5, 0) == 0


def test_a_hyperloglog_grows_per_visitor_until_redis_makes_it_dense() -> None:
    m = redis_of(hll_base_bytes=150, hll_bytes_per_visitor=3)
    assert m.hll_bytes(1) == 153
    assert m.hll_bytes(1_000) == 3_150  # 3,000 B of sparse encoding: still sparse
    assert m.hll_bytes(1_001) == DENSE_HLL_BYTES


def test_a_buckets_bytes_are_its_counters_its_visitors_and_each_page_seen() -> None:
    m = redis_of(counter_bytes=88, fact_bytes=35, top_entry_bytes=20, hll_base_bytes=150,
                 hll_bytes_per_visitor=3)
    # 40 views over 40 pages, each view a new visitor: the site's HLL holds 40 visitors,
    # about 25.3 pages are seen (40 x (1 - e^-1)), each with 1.6 visitors: inline in its
    # facts, and each in the leaderboard.
    seen = 40 * (1 - math.exp(-1))
    expected = 2 * 88 + (150 + 3 * 40) + seen * (35 + 20)
    assert bucket_bytes(m, 40, 40) == pytest.approx(expected)
    # 4,000 views over 40 pages: every page seen, each with 100 visitors, so each is
    # promoted to its own HyperLogLog; the leaderboard holds them all (40 < 128).
    seen = 40 * -math.expm1(-100)
    promoted = 2 * 88 + 14_400 + seen * (35 + 150 + 3 * 100 + 20)
    assert bucket_bytes(m, 4_000, 40) == pytest.approx(promoted)
    # A leaderboard holds at most 128 pages.
    many = bucket_bytes(m, 1_000, 1_000_000)
    assert many == pytest.approx(2 * 88 + 150 + 3 * 1_000 + 1_000 * 35 + 128 * 20, rel=1e-3)


def test_redis_keeps_48_hours_of_minutes_90_days_of_hours_and_days_for_the_horizon() -> None:
    m = redis_of(counter_bytes=100, overhead=1.5)  # only the counters cost anything
    load = Load(events_per_s=10, sites=7, pages=70, pages_per_site=10)
    memory = redis_plan(m, load, Retention(), horizon_days=365)
    per_bucket = 2 * 100 * 1.5 * 7  # views and named pages
    assert memory.minute == pytest.approx(per_bucket * (48 * 60 + 1))
    assert memory.hour == pytest.approx(per_bucket * (90 * 24 + 1))
    assert memory.day_per_day == pytest.approx(per_bucket)
    assert memory.total == pytest.approx(per_bucket * (2_881 + 2_161 + 365 + 1))


def test_redis_shards_are_the_larger_of_the_cpu_and_the_memory_bound(results: Path) -> None:
    measured = inputs(capacity.load_docs(results))
    small = plan(measured, Load(100_000, 100, 200, 2, shard_memory_gb=1_000_000))
    # 100 us of Redis CPU an event x 100,000 / 0.6 = 16.7 cores: 17 shards
    assert (small.redis_shards_cpu, small.redis_shards_memory) == (17, 1)
    assert small.redis_shards == 17
    big = plan(measured, Load(100_000, 5_000, 200_000, 40, shard_memory_gb=1))
    assert big.redis_shards == big.redis_shards_memory > big.redis_shards_cpu
    assert big.redis_shards_memory == math.ceil(big.redis.total / 1e9)


def test_the_plan_for_a_load_adds_up_the_measured_costs(results: Path) -> None:
    measured = inputs(capacity.load_docs(results))
    p = plan(measured, Load(100_000, 5_000, 200_000, 40, headroom=0.5))
    # gateway from the /events peak (1.0 core / 20,000 ev/s = 50 us), the rest from e2e
    assert p.cores["gateway"] == pytest.approx(100_000 * 50e-6 / 0.5)
    assert p.cores["mongodb"] == pytest.approx(100_000 * 300e-6 / 0.5)  # ferretdb+postgres
    assert p.aggregators == 80  # 100,000 / (2,500 x 0.5), the newer drain
    assert p.partitions == 162
    assert p.kafka_disk_per_day == per_day(100_000, KAFKA_ASSUMED.value, 3)
    assert p.mongo_per_day == per_day(100_000, MONGO_ASSUMED.value)
    assert p.mongo_kept == p.mongo_per_day * 395
    assert p.total_cores == pytest.approx(sum(p.cores.values()))
    track = plan(measured, Load(100_000, 5_000, 200_000, 40, headroom=0.5, track_share=1))
    assert track.cores["gateway"] == pytest.approx(100_000 * 500e-6 / 0.5)
    assert track.cores["nginx"] == pytest.approx(100_000 * 100e-6 / 0.5)


def test_kafka_keeps_what_its_size_bound_allows_when_less_than_30_days(results: Path) -> None:
    p = plan(inputs(capacity.load_docs(results)), Load(100_000, 5_000, 200_000, 40))
    assert p.kafka_disk_kept == p.partitions * 1024**3 * 3
    assert p.kafka_history_hours == pytest.approx(p.kafka_disk_kept / p.kafka_disk_per_day * 24)
    quiet = plan(inputs(capacity.load_docs(results)), Load(1, 1, 1, 1))
    assert quiet.kafka_disk_kept == pytest.approx(quiet.kafka_disk_per_day * 30)


# Which measurements, from which files


def test_each_input_comes_from_the_newest_file_that_holds_it(results: Path) -> None:
    docs = capacity.load_docs(results)
    assert docs[0][0] == "bench-20261203T0000Z-memory.json"
    newest = drain(docs)  # the full run's 3,000 is older
    assert (newest.value, newest.file) == (2500, "bench-20261202T0000Z-aggregator.json")
    sample = cpu_sample(docs)
    assert sample.file == "bench-20261201T0000Z-e2e-ingest-aggregator.json"
    assert sample.date == "2026-12-01T00:00:00Z"


def test_the_cpu_sample_is_the_highest_sustained_step_in_microseconds_an_event(
        results: Path) -> None:
    sample = cpu_sample(capacity.load_docs(results))
    assert sample.rate == 2000 and sample.figure == "freshness @ 2,000 ev/s (sustained)"
    assert sample.us_per_event["aggregator"] == pytest.approx(200)  # 0.4 cores / 2,000
    assert sample.us_per_event["mongodb"] == pytest.approx(300)  # ferretdb + postgres
    assert set(sample.us_per_event) == {"gateway", "nginx", "kafka", "aggregator", "redis",
                                        "mongodb"}
    assert sum(sample.bench_us_per_event.values()) == pytest.approx(100)  # 0.2 cores


def test_a_step_with_a_stage_at_zero_cores_is_passed_over_for_the_next_one_down(
        tmp_path: Path) -> None:
    glitch = {**PIPELINE, "redis": 0.0}
    write(tmp_path, "20261203T0000Z", "e2e",
          [step(1000, True), step(2500, True, glitch), step(2000, True)])
    sample = cpu_sample(capacity.load_docs(tmp_path))
    assert sample.rate == 2000
    assert sample.passed_over and "redis 0.0 cores" in sample.passed_over[0]
    write(tmp_path, "20261204T0000Z", "e2e", [step(5000, True, glitch)])
    assert cpu_sample(capacity.load_docs(tmp_path)).rate == 2000  # the older file's


def test_gateway_costs_are_the_peak_steps_cores_over_their_rate(results: Path) -> None:
    events, track, nginx = gateway_costs(capacity.load_docs(results))
    assert events.value == pytest.approx(50) and events.unit == "us/event"
    assert track.value == pytest.approx(500) and nginx.value == pytest.approx(100)


def test_the_hyperloglog_fit_passes_through_the_soaks_minute_and_site_sizes(
        results: Path) -> None:
    m = redis_memory(capacity.load_docs(results))
    assert m.hll_bytes(distinct(300_000 / 1_800, 100_000)) == pytest.approx(700)  # a minute
    assert m.hll_bytes(distinct(1_000, 100_000)) == pytest.approx(2_550)  # a site
    assert m.fact_bytes == pytest.approx(35)  # 17.5 MB over 500,000 entries
    assert m.top_entry_bytes == pytest.approx(20)
    assert m.counter_bytes == pytest.approx(88) and m.site_bytes == pytest.approx(152)
    assert m.overhead == pytest.approx(1.1)


def test_the_first_failed_rate_is_the_lowest_failure_above_the_sustained_one(
        results: Path) -> None:
    found = sustained(capacity.load_docs(results))
    assert (found.rate, found.first_failed) == (2000, 2500)


def test_kafka_and_mongodb_bytes_are_assumed_until_a_soak_measured_them(
        results: Path) -> None:
    docs = capacity.load_docs(results)
    assert stored_bytes(docs, "kafka", KAFKA_ASSUMED) is KAFKA_ASSUMED
    assert "not measured yet" in KAFKA_ASSUMED.note and "make bench-memory" in MONGO_ASSUMED.note
    write(results, "20261204T0000Z", "memory", [soak({
        "kafka": {"bytes_per_event": 210.5, "events": 300_000},
        "mongo": {"bytes_per_event": None, "events": 300_000}})])
    docs = capacity.load_docs(results)
    kafka = stored_bytes(docs, "kafka", KAFKA_ASSUMED)
    assert (kafka.value, kafka.file) == (210.5, "bench-20261204T0000Z-memory.json")
    assert stored_bytes(docs, "mongo", MONGO_ASSUMED) is MONGO_ASSUMED


def test_a_missing_measurement_names_the_make_target_that_takes_it(tmp_path: Path) -> None:
    with pytest.raises(MissingMeasurement, match="make bench-e2e"):
        cpu_sample([])
    with pytest.raises(MissingMeasurement, match="make bench-memory"):
        redis_memory([])
    assert capacity.main(["--machine", "--results-dir", str(tmp_path)]) == 2


# The check against this machine


def sample_of(total_us: float) -> CpuSample:
    return CpuSample(2000, {"aggregator": total_us * 0.9}, {"load generator": total_us * 0.1},
                     2, "f", "d")


def test_the_machine_check_inverts_the_model_over_every_stage_and_the_bench() -> None:
    check = check_machine(sample_of(900), Sustained(2000, 2500, "f", "d"), cores=2)
    assert check.predicted == pytest.approx(2_222.2, abs=0.1)  # 2 cores / 900 us
    assert check.ratio == pytest.approx(1.111, abs=0.001)
    assert check.within_tolerance and check.in_bracket


@pytest.mark.parametrize(("total_us", "within"), [
    (1_000 / 1.25, True), (1_000 / 1.26, False), (1_000 / 0.75, True), (1_000 / 0.74, False)])
def test_the_machine_check_allows_25_percent_either_way(total_us: float, within: bool) -> None:
    check = check_machine(sample_of(total_us), Sustained(2000, None, "f", "d"), cores=2)
    assert check.within_tolerance is within


def test_a_prediction_at_or_above_the_first_failed_rate_is_outside_the_bracket() -> None:
    check = check_machine(sample_of(800), Sustained(2000, 2500, "f", "d"), cores=2)
    assert check.predicted == pytest.approx(2500) and not check.in_bracket


# The command


def test_the_command_prints_the_plan_and_every_measurement_with_its_file(
        results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--events-per-s", "100000", "--sites", "5000", "--pages", "200000",
                          "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    for text in ("gateway cores", "aggregators", "Kafka partitions", "Redis shards",
                 "Redis memory", "MongoDB storage per day", "total cores",
                 "Measurements used", "bench-20261202T0000Z-aggregator.json",
                 "2026-12-03T00:00:00Z", "not measured yet, assumed 200 B"):
        assert text in out, text


def test_the_machine_check_is_printed_and_exits_0_even_outside_25_percent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = {k: v / 2 for k, v in PIPELINE.items()}  # half the CPU: predicts twice the rate
    write(tmp_path, "20261201T0000Z", "e2e-ingest-aggregator",
          [step(2000, True, busy), highest(2000, [[2000, True], [4000, False]]), *INGEST,
           *drain_figure(3000)])
    write(tmp_path, "20261203T0000Z", "memory", [soak()])
    assert capacity.main(["--machine", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "predicted / sustained = 2.22" in out and "within 25% (0.75..1.25): NO" in out
