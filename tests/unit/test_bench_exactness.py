"""The exactly-once comparison at the end of a benchmark, and the goals table."""

from __future__ import annotations

from bench.exactness import Expected, Observed, compare, compare_site
from bench.goals import met, rows


def site(acked: int, ambiguous: int = 0, pages: dict[str, int] | None = None) -> Expected:
    exp = Expected("bench-x")
    exp.add(acked, ambiguous, pages)
    return exp


def test_counts_equal_to_the_acknowledged_events_are_exact() -> None:
    verdict = compare([site(100)], {"bench-x": Observed("bench-x", 100, None, 100)})
    assert verdict.ok and verdict.acked == 100
    assert verdict.line().startswith("exactly-once: ok")


def test_fewer_views_than_acknowledged_is_a_loss() -> None:
    diffs = compare_site(site(100), Observed("bench-x", 97, None, 100))
    assert diffs == ["bench-x /stats total: 97 < 100 acknowledged (3 lost)"]


def test_more_documents_than_acknowledged_and_ambiguous_is_a_double_count() -> None:
    diffs = compare_site(site(100, 5), Observed("bench-x", 100, None, 106))
    assert diffs == ["bench-x MongoDB documents: 106 > 100 acknowledged + 5 ambiguous "
                     "(1 counted twice)"]


def test_unanswered_requests_may_or_may_not_have_been_counted() -> None:
    for counted in (100, 103, 105):
        assert compare_site(site(100, 5), Observed("bench-x", counted, None, counted)) == []
    verdict = compare([site(100, 5)], {"bench-x": Observed("bench-x", 103, None, 103)})
    assert verdict.ok and verdict.ambiguous_counted == 3
    assert verdict.line() == ("exactly-once: ok (1 sites, 100 events acknowledged, "
                              "3 of 5 ambiguous counted)")


def test_each_page_is_checked_when_the_bench_knows_its_pages() -> None:
    exp = site(3, pages={"/a": 2, "/b": 1})
    assert compare_site(exp, Observed("bench-x", 3, {"/a": 2, "/b": 1}, 3)) == []
    diffs = compare_site(exp, Observed("bench-x", 3, {"/a": 1, "/b": 1, "/c": 1}, 3))
    assert diffs == ["bench-x page /a: 1 < 2 acknowledged (1 lost)",
                     "bench-x page /c: 1 > 0 acknowledged + 0 ambiguous (1 counted twice)"]


def test_a_site_that_could_not_be_read_fails_the_check() -> None:
    verdict = compare([site(1)], {"bench-x": Observed("bench-x", None, None, None)})
    assert not verdict.ok
    assert verdict.differences == ("bench-x /stats: not read", "bench-x MongoDB: not read")
    assert not compare([site(1)], {}).ok


def test_mongo_is_left_out_when_not_checked() -> None:
    assert compare([site(1)], {"bench-x": Observed("bench-x", 1)}, check_mongo=False).ok


def test_expectations_add_up_over_steps() -> None:
    exp = Expected("bench-x")
    exp.add(2, 1, {"/a": 2}, {"/a": 1})
    exp.add(3, 0, {"/a": 1, "/b": 2})
    assert (exp.acked, exp.ambiguous, exp.pages, exp.pages_ambiguous) == (
        5, 1, {"/a": 3, "/b": 2}, {"/a": 1})


def test_a_goal_is_met_by_its_ratio_or_by_its_absolute_floor() -> None:
    goal = {"min_ratio": 0.5, "or_min_value": 100_000}
    assert met(60_000, 0.55, goal) is True
    assert met(120_000, 0.3, goal) is True
    assert met(60_000, 0.3, goal) is False
    assert met(50.0, 0.5, {"max_ratio": 1.0}) is True
    assert met(150.0, 1.5, {"max_ratio": 1.0}) is False
    assert met(1.0, None, {"min_value": 1.0}) is False  # two aggregators must be faster
    assert met(None, None, {"min_ratio": 0.6}) is None


def test_a_cost_goal_is_met_at_or_under_its_ceiling() -> None:
    goal = {"max_value": 200}
    assert met(200, None, goal) is True
    assert met(200.5, None, goal) is False
    assert met(None, None, goal) is None


def test_only_goal_figures_are_in_the_goals_table() -> None:
    data = {"limits": {"l": {"value": 100.0, "unit": "req/s"}},
            "figures": [{"suite": "ingest", "name": "/track peak", "value": 70.0,
                         "unit": "events/s", "limit": "l", "ratio": 0.7,
                         "extra": {"goal": {"min_ratio": 0.6, "text": ">= 60%"}}},
                        {"suite": "ingest", "name": "/track c=8", "value": 10.0,
                         "unit": "events/s", "limit": "l", "ratio": 0.1, "extra": {}}]}
    assert rows(data) == [("ingest: /track peak", "70 events/s", "l 100 req/s", "70%",
                           ">= 60%", "yes")]


def test_a_run_is_exact_only_when_every_check_passed() -> None:
    from bench.results import Run
    run = Run(("ingest",), {}, {}, {})
    assert run.exact  # no check ran
    run.add_check("ingest", {"ok": True})
    run.add_check("e2e", {"ok": False})
    assert not run.exact
    assert [c["suite"] for c in run.as_json()["exactly_once"]] == ["ingest", "e2e"]


def test_the_aggregator_bench_expects_per_site_and_page_what_it_produced() -> None:
    from bench.aggregator import counted_into
    from bench.events import page_views
    expected = {site: Expected(site) for site in ("a", "b")}
    events = list(counted_into(page_views(50, ["a", "b"], 1_780_000_000_000), expected))
    assert expected["a"].acked + expected["b"].acked == len(events) == 50
    assert sum(expected["a"].pages.values()) == expected["a"].acked
