"""The pure pieces of the open-loop generator: vegeta's results read back, and latencies,
errors and send lags computed against the ideal schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.openloop import Hit, Pace, attack_args, parse_results, summarise, targets

T0 = 1_796_199_350_000_000_000  # Unix nanoseconds
MS = 1_000_000

# as ``vegeta encode --to csv`` writes them (v12.13.0, -max-body=0), out of order
CSV = [
    f'{T0 + 10 * MS},200,1500000,0,2,,,,1,GET,http://127.0.0.1:8080/stats?site_id=a,'
    'Q29udGVudC1UeXBlOiBhcHBsaWNhdGlvbi9qc29uDQoNCg==',
    f'{T0},0,1143097,0,0,"Get ""http://127.0.0.1:9/x"": dial tcp 0.0.0.0:0->127.0.0.1:9: '
    'connect: connection refused",,,0,GET,http://127.0.0.1:9/x,',
    f"{T0 + 20 * MS},503,800000,0,0,503 Service Unavailable,,,2,GET,http://h/x,",
    "",
]


def hit(seq: int, late_ms: float = 0.0, took_ms: float = 1.0, code: int = 200,
        error: str = "", interval_ms: float = 10.0) -> Hit:
    """Request ``seq`` of a schedule of one every ``interval_ms``, sent ``late_ms`` late."""
    return Hit(seq, T0 + round((seq * interval_ms + late_ms) * MS), round(took_ms * MS),
               code, error)


# --- reading vegeta's results ---

def test_results_are_read_with_nanosecond_times_and_put_in_sequence_order() -> None:
    hits = parse_results(CSV)
    assert [h.seq for h in hits] == [0, 1, 2]
    assert hits[1] == Hit(1, T0 + 10 * MS, 1_500_000, 200, "")
    assert hits[0].error.endswith("connect: connection refused")  # commas and quotes kept


def test_only_2xx_and_3xx_without_a_transport_error_count_as_answered() -> None:
    hits = parse_results(CSV)
    assert [h.ok for h in hits] == [False, True, False]
    assert not Hit(3, T0, 1, 404, "").ok
    assert Hit(4, T0, 1, 302, "").ok


# --- the schedule ---

def test_the_pace_is_whole_requests_a_second_or_one_every_so_long_below_one() -> None:
    assert (Pace.of(1234.6).flag(), Pace.of(1234.6).interval_ns) == (
        "-rate=1235/1000000000ns", 1_000_000_000 // 1235)
    assert Pace.of(0.25) == Pace(1, 4_000_000_000)
    assert Pace.of(0.25).rate == 0.25


def test_as_many_requests_are_scheduled_as_fit_in_the_duration() -> None:
    assert Pace.of(2000).scheduled(3) == 6000
    assert Pace.of(0.25).scheduled(10) == 2
    assert Pace.of(3).scheduled(0) == 0


# --- latencies, lags and errors ---

def test_on_schedule_the_latency_is_vegeta_s_own_and_nothing_is_late() -> None:
    result = summarise(Pace.of(100), 0.05, [hit(i, took_ms=2.0) for i in range(5)])
    assert result.latencies_ms == pytest.approx([2.0] * 5)
    assert (result.max_send_lag_ms, result.errors, result.scheduled) == (0.0, 0, 5)


def test_a_request_sent_late_is_measured_from_when_it_was_due() -> None:
    hits = [hit(0), hit(1), hit(2, late_ms=200.0, took_ms=1.0), hit(3, late_ms=195.0)]
    result = summarise(Pace.of(100), 0.04, hits)
    assert result.latencies_ms == pytest.approx([1.0, 1.0, 201.0, 196.0])
    assert result.max_send_lag_ms == pytest.approx(200.0)
    assert result.p99_send_lag_ms == pytest.approx(199.85)


def test_the_start_is_fixed_by_the_request_sent_most_nearly_on_time() -> None:
    # the first request itself was 30 ms late, the second on time: lags are not understated
    hits = [hit(0, late_ms=30.0), hit(1), hit(2)]
    result = summarise(Pace.of(100), 0.03, hits)
    assert result.max_send_lag_ms == pytest.approx(30.0)
    assert result.latencies_ms == pytest.approx([31.0, 1.0, 1.0])


def test_a_stall_counts_for_every_request_scheduled_during_it() -> None:
    # the generator stalled for 1 s (every worker busy), then sent the 99 requests due
    # meanwhile at once, each answered in 1 ms: vegeta's own latencies say 1 ms, yet a
    # request due every 10 ms waited, 496 ms at the median
    hits = [hit(0)] + [hit(i, late_ms=1000.0 - 10 * i) for i in range(1, 100)]
    assert sorted(h.latency_ns for h in hits)[50] == MS
    result = summarise(Pace.of(100), 1.0, hits)
    assert result.latency.p50 == pytest.approx(496)
    assert result.latency.p99 > 980
    assert result.max_send_lag_ms == pytest.approx(990)
    assert result.answered_rate == 100


def test_error_statuses_and_transport_errors_are_errors_by_kind_not_latencies() -> None:
    hits = [hit(0), hit(1, code=503, error="503 Service Unavailable"),
            hit(2, code=0, error="connect: connection refused"),
            hit(3, code=503, error="503 Service Unavailable"), hit(4, code=404)]
    result = summarise(Pace.of(100), 0.05, hits)
    assert len(result.latencies_ms) == 1
    assert result.errors == 4
    assert result.error_kinds == {"503 Service Unavailable": 2,
                                  "connect: connection refused": 1, "status 404": 1}


def test_requests_never_sent_within_the_duration_are_unsent_errors() -> None:
    result = summarise(Pace.of(100), 0.1, [hit(i) for i in range(7)])
    assert (result.scheduled, result.unsent, result.errors) == (10, 3, 3)
    assert result.as_json()["unsent"] == 3


def test_the_warm_up_is_left_out_of_every_figure() -> None:
    hits = [hit(i, late_ms=50.0 if i < 3 else 0.0, took_ms=80.0 if i < 5 else 1.0,
                code=200 if i else 0, error="" if i else "refused") for i in range(15)]
    result = summarise(Pace.of(100), 0.1, hits, warmup_s=0.05)
    assert (result.scheduled, result.errors, result.max_send_lag_ms) == (10, 0, 0.0)
    assert result.latencies_ms == pytest.approx([1.0] * 10)


def test_nothing_sent_is_all_errors_and_no_latency() -> None:
    result = summarise(Pace.of(10), 1.0, [])
    assert (result.scheduled, result.errors, result.max_send_lag_ms) == (10, 10, 0.0)
    assert result.as_json()["answered"] == 0


# --- the attack ---

def test_the_target_carries_the_headers_so_they_stay_out_of_the_command_line() -> None:
    text = targets("http://h/stats?site_id=a", {"Authorization": "Bearer s3cret"})
    assert text == "GET http://h/stats?site_id=a\nAuthorization: Bearer s3cret\n\n"
    args = attack_args(Path("/v"), Pace.of(50), 2.5, Path("/t"), Path("/o"))
    assert "-rate=50/1000000000ns" in args and "-duration=2500000000ns" in args
    assert not any("s3cret" in a for a in args)
