"""The catalog of aggregates drives the writer, the key names and the test fake alike."""

from __future__ import annotations

import random

import pytest
from redis.exceptions import ResponseError

from aggregator.counting.aggregate import QUOTA, RedisOps, aggregate, to_ops
from aggregator.counting.redis_sink import APPLY_SCRIPT
from contracts.aggregates import (
    ALL_TIME,
    CATALOG,
    DIMENSION_RANKINGS,
    OPCODES,
    PAGE_CATALOG,
    PAGE_VISITORS,
    UNITS,
    UTM_CAMPAIGN,
    Kind,
    Scope,
    parse_suffix,
    scopes_of,
    suffix,
)
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.page_facts import group_of
from contracts.settings import Retention
from query_api.versioned_cache import MergedRanking
from tests.unit.fakes import FakeAggregateStore

TS = 1_795_860_000_000 + 61_000  # 2026-11-28T10:01:01Z


@pytest.mark.parametrize("page", ["/p", "a:b:c", "t", "m5", ":", "é ü"])
def test_every_key_name_parses_back_to_its_aggregate_scope_and_page(page: str) -> None:
    for agg in CATALOG:
        for scope in scopes_of(TS):
            name = suffix(agg, scope, page if agg.per_page else None)
            parsed = parse_suffix(name)
            assert (parsed.aggregate, parsed.scope) == (agg, scope)
            assert parsed.page == (page if agg.per_page else None)


@pytest.mark.parametrize("name", ["offsets", "pages:h:490000", "views", "views:x1",
                                  "uvp:t", "views:t:/p", "nope:t"])
def test_names_outside_the_catalog_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        parse_suffix(name)


# The members a page view from our own /track (no User-Agent, no referrer) takes in each
# breakdown it counts in: UTM and event are not among them, and bots only counts bots.
def test_an_event_counts_in_every_aggregate_of_every_scope_and_nowhere_else() -> None:
    """An event of /track (no tracker, User-Agent, referrer or UTM tag): the page aggregates
    only, no breakdown."""
    ops = to_ops(SiteKeys("s"), aggregate([PageView("e", "s", "/p", "u", TS, TS)]),
                 Retention())

    def name(at: object) -> str:
        return SiteKeys("s").suffix_of(ops.keys[int(str(at)) - 1])

    written = {name(op[1]) for op in ops.ops}
    written |= {name(at) for op in ops.ops if op[0] == OPCODES[Kind.FACTS] for at in op[3:5]}
    # A page with one visitor keeps it in its facts: no HyperLogLog of its own.
    expected = {suffix(a, s, str(group_of("/p", s.unit)) if a.per_page else None)
                for a in PAGE_CATALOG if a is not PAGE_VISITORS for s in scopes_of(TS)}
    assert written == expected
    assert len(scopes_of(TS)) == 1 + len(UNITS)
    # Rankings are written by the breakdowns (the leaderboards by the facts operation).
    assert {op[0] for op in ops.ops} - {QUOTA} == set(OPCODES.values()) - {"z"}


def test_the_apply_script_handles_exactly_the_catalog_operations() -> None:
    for code in OPCODES.values():
        assert f"'{code}'" in APPLY_SCRIPT
    assert "unknown aggregate operation" in APPLY_SCRIPT


async def test_the_fake_store_refuses_an_unknown_operation_and_changes_nothing() -> None:
    store = FakeAggregateStore()
    ops = to_ops(SiteKeys("s"), aggregate([PageView("e", "s", "/p", "u", TS, TS)]),
                 Retention())
    broken = RedisOps(ops.keys, [*ops.ops, ["x", 3, 0, 1]], ops.generation)
    with pytest.raises(ResponseError):
        await store.apply(broken, 0, 0, 0)
    assert not store.counters and not store.sorted_sets and not store.offsets["s"]


def test_rankings_hold_negated_views_so_redis_order_is_views_down_then_page_up() -> None:
    events = [PageView(f"e{i}", "s", "/p", "u", TS, TS, utm_campaign=campaign)
              for i, campaign in enumerate(["b", "a", "b", "c", "a", "d"])]
    ops = to_ops(SiteKeys("s"), aggregate(events), Retention())
    ranking = SiteKeys("s").key(DIMENSION_RANKINGS[UTM_CAMPAIGN], ALL_TIME)
    pairs = [op[3:] for op in ops.ops
             if op[0] == "z" and ops.keys[int(str(op[1])) - 1] == ranking]
    scores = dict(zip(pairs[0][::2], pairs[0][1::2], strict=True))
    assert scores == {"a": -2, "b": -2, "c": -1, "d": -1}
    assert sorted(scores, key=lambda p: (scores[p], p)) == ["a", "b", "c", "d"]


def test_a_merged_ranking_swaps_a_bucket_in_as_if_summed_afresh() -> None:
    rng = random.Random(7)
    buckets = [Scope("h", n) for n in range(6)]
    merged = MergedRanking()
    current: dict[Scope, dict[str, int]] = {}
    for step in range(300):
        bucket = rng.choice(buckets)
        pages = {f"p{rng.randrange(40)}": rng.randrange(1, 9) for _ in range(rng.randrange(15))}
        current[bucket] = pages
        merged.swap(bucket, step, pages)
        want: dict[str, int] = {}
        for share in current.values():
            for page, n in share.items():
                want[page] = want.get(page, 0) + n
        assert merged.counts == want
        assert merged.ranked() == sorted(want.items(), key=lambda pv: (-pv[1], pv[0]))
