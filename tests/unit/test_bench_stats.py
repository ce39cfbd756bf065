"""The pure pieces of the benchmarks: percentiles, ratios, parsing tool output, tables."""

from __future__ import annotations

import math

import pytest

from bench.limits import parse_producer_performance, parse_redis_benchmark
from bench.replay import parse_summary
from bench.results import Figure, Limit, Run
from bench.stats import Latency, percentile, rate, ratio
from bench.table import markdown, number, render, rows
from bench.wrk import parse


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile(list(range(101)), 99) == 99


def test_percentile_of_nothing_is_not_a_number() -> None:
    assert math.isnan(percentile([], 50))


def test_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ratio_is_missing_when_the_limit_was_not_measured() -> None:
    assert ratio(50, 200) == 0.25
    assert ratio(50, None) is None
    assert ratio(50, 0) is None
    assert ratio(math.nan, 10) is None


def test_rate_without_elapsed_time_is_not_a_number() -> None:
    assert rate(10, 2) == 5
    assert math.isnan(rate(10, 0))


def test_latency_summary_of_samples() -> None:
    latency = Latency.of([float(x) for x in range(1, 1001)])
    assert latency.p50 == pytest.approx(500.5)
    assert latency.max == 1000


def test_wrk_output_is_read_from_the_report_line() -> None:
    out = ("Running 3s test\nWRK_JSON {\"requests\":3000,\"duration_us\":3000000,\"bytes\":1,"
           "\"connect\":0,\"read\":1,\"write\":0,\"status\":9,\"timeout\":0,\"p50_us\":1500,"
           "\"p99_us\":9000,\"p999_us\":12000,\"max_us\":15000}\n")
    result = parse(out)
    assert result.errors == 10
    assert result.rps == pytest.approx(2990 / 3)
    assert result.latency.p99 == 9.0


def test_wrk_output_without_the_report_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse("wrk: connection refused")


def test_producer_performance_summary_is_parsed() -> None:
    out = ("Option --producer-props has been deprecated\n"
           "120000 records sent, 26356.248627 records/sec (4.07 MB/sec), 39.86 ms avg latency, "
           "1579.00 ms max latency, 24 ms 50th, 150 ms 95th, 193 ms 99th, 217 ms 99.9th.\n")
    perf = parse_producer_performance(out)
    assert perf["records_per_s"] == pytest.approx(26356.248627)
    assert perf["p99_ms"] == 193


def test_redis_benchmark_csv_with_json_in_the_test_name_is_read_from_the_end() -> None:
    out = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
           '"p99_latency_ms","max_latency_ms"\n'
           '"EVALSHA abc 5 k 0 1 0 [["i",2,1,0]]","13679.89","3.1","0.2","2.9","5.0","7.33",'
           '"9.0"\n')
    assert parse_redis_benchmark(out) == (13679.89, 7.33)


def test_redis_benchmark_errors_are_not_taken_for_figures() -> None:
    with pytest.raises(ValueError):
        parse_redis_benchmark("Error from server: NOSCRIPT No matching script.\n")


def test_replay_summary_is_the_last_json_line() -> None:
    assert parse_summary('progress\n{"records": 5, "seconds": 1.0}\n')["records"] == 5


def _run() -> Run:
    run = Run(("ingest",), {}, {}, {})
    run.add_limit(Limit("trivial", 4000.0, "req/s", "wrk"))
    run.add(Figure("ingest", "/track c=8", 1000.0, "events/s", Latency(1, 2, 3, 4), 0,
                   "trivial"))
    run.add(Figure("ingest", "catch-up", 1234.5, "events/s"))
    return run


def test_each_figure_is_shown_as_a_ratio_to_its_limit() -> None:
    table = rows(_run().as_json())
    assert table[0][-1] == "25%"
    assert table[0][-2] == "trivial 4,000 req/s"
    assert table[1][-1] == "-"


def test_tables_render_every_row_in_aligned_columns_and_as_markdown() -> None:
    table = rows(_run().as_json())
    text = render(table)
    assert len({len(line.rstrip()) for line in text.splitlines()[:2]}) == 1
    assert markdown(table).count("\n") == 3


def test_numbers_get_thousands_separators_and_missing_ones_a_dash() -> None:
    assert number(12345.6) == "12,346"
    assert number(2.5) == "2.5"
    assert number(None) == "-"
    assert number(math.nan) == "-"


def test_wrk_counts_of_sent_answered_and_accepted_are_read_when_present() -> None:
    out = ("WRK_JSON {\"requests\":300,\"duration_us\":3000000,\"bytes\":1,\"connect\":0,"
           "\"read\":0,\"write\":0,\"status\":0,\"timeout\":0,\"p50_us\":1000,\"p99_us\":2000,"
           "\"p999_us\":3000,\"max_us\":4000,\"sent\":310,\"answered\":300,\"accepted\":298}\n")
    result = parse(out)
    assert (result.sent, result.answered, result.accepted, result.unanswered) == (
        310, 300, 298, 10)


def test_wrk_without_counts_has_nothing_unanswered() -> None:
    out = ("WRK_JSON {\"requests\":3,\"duration_us\":3000000,\"bytes\":1,\"connect\":0,"
           "\"read\":0,\"write\":0,\"status\":0,\"timeout\":0,\"p50_us\":1,\"p99_us\":2,"
           "\"p999_us\":3,\"max_us\":4}\n")
    assert parse(out).unanswered == 0


def test_aggregator_writers_come_from_the_environment_else_default_to_one() -> None:
    from bench.settings import mongo_writers
    assert mongo_writers({"AGGREGATOR_MONGO_WRITERS": "3"}) == 3
    assert mongo_writers({}) >= 1


def test_e2e_batches_are_at_most_100_events_and_at_least_20_requests_a_second() -> None:
    from bench.e2e import batch_size, bodies
    assert batch_size(20_000) == 100
    assert batch_size(1000) == 50
    assert batch_size(10) == 1
    prepared = bodies("bench-x", 50)
    assert len(prepared) == 8 and len(set(prepared)) == 8


def test_e2e_load_expects_every_page_once_per_request_accepted() -> None:
    from bench.e2e import Step, tally
    from bench.openloop import Hit
    hits = [Hit(0, 0, 1, 202, ""), Hit(1, 0, 1, 202, ""), Hit(2, 0, 1, 503, ""),
            Hit(3, 0, 1, 0, "timeout")]
    step = Step(1000, "bench-load", "bench-fresh")
    tally(step, hits, 3)
    assert (step.accepted, step.ambiguous, step.errors) == (6, 3, 1)
    assert step.pages == {"/load/0": 2, "/load/1": 2, "/load/2": 2}
    assert step.pages_ambiguous == {"/load/0": 1, "/load/1": 1, "/load/2": 1}
    load, _ = step.expected()
    assert (load.site, load.acked, load.ambiguous) == ("bench-load", 6, 3)


def test_e2e_bisection_steps_may_be_zero_but_not_negative() -> None:
    from pathlib import Path

    from bench.settings import BenchSettings, BenchSettingsError
    env, none = {"HTTP_URL": "http://127.0.0.1:1"}, Path("/nonexistent/stack.env")
    assert BenchSettings.from_env({**env, "BENCH_E2E_BISECT_STEPS": "0"},
                                  none).e2e_bisect_steps == 0
    assert BenchSettings.from_env(env, none).e2e_bisect_steps == 2
    with pytest.raises(BenchSettingsError):
        BenchSettings.from_env({**env, "BENCH_E2E_BISECT_STEPS": "-1"}, none)
