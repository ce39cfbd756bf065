"""The per-site page quota without a broker: past ``max_pages`` named pages, new pages count
under ``(other)``, never as new keys; totals, named pages and ``(other)`` stay exact through
pieces, crashes between pieces and redeliveries; the gateway refuses ``(other)`` as a page
id; ``--verify`` judges an over-quota site by what must hold whatever the interleaving."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from aggregator.counting.aggregate import PAGE_QUOTA, aggregate, to_ops
from aggregator.counting.source import InMemorySource
from aggregator.page_quota import quota_of
from aggregator.recovery.rebuild import diff
from contracts.aggregates import ALL_TIME, NAMED_PAGES, OVERFLOW_PAGE, VIEWS, Scope
from contracts.event import InvalidEvent, PageView, ValidationPolicy, validate_event
from contracts.fast_events import accept_json
from contracts.keys import SiteKeys
from contracts.registry import FixedRegistry
from contracts.settings import Retention
from contracts.tenancy import DEFAULT_MAX_PAGES, Registry, Site
from tests.unit.fakes import FakeAggregateStore
from tests.unit.test_pipeline import NOW, RecordingStore, make, many_pages, record, views


def ranking(redis: FakeAggregateStore, site: str = "s") -> Counter[str]:
    """Views per page named in all time (its page facts)."""
    return redis.page_views(SiteKeys(site))


def named(redis: FakeAggregateStore) -> set[str]:
    return set(ranking(redis)) - {OVERFLOW_PAGE}


def over_quota(pipeline_metrics: object, site: str = "s") -> float:
    value = pipeline_metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "aggregator_events_over_page_quota_total", {"site": site})
    return value or 0.0


async def drain(pipeline, source: InMemorySource, batch: int) -> None:  # type: ignore[no-untyped-def]
    while records := await source.poll(batch, 0):
        await pipeline.process(records)


async def test_pages_past_the_quota_count_under_other_and_totals_stay_exact() -> None:
    pipeline, source, mongo, redis, _ = make(many_pages(40))
    pipeline.max_pages = lambda site: 5
    await drain(pipeline, source, batch=7)
    assert views(redis) == 40
    assert len(named(redis)) == 5
    assert all(ranking(redis)[p] == 1 for p in named(redis))
    assert ranking(redis)[OVERFLOW_PAGE] == 35
    assert over_quota(pipeline.metrics) == 35
    assert {d["page_id"] for d in mongo.docs.values()} == {f"/p{i}" for i in range(40)}
    assert source.committed == {0: 20, 1: 20}
    # No refused page has facts of its own in any bucket; (other) has.
    pages_with_facts = {page for name, facts in redis.facts.items() for page in facts}
    assert pages_with_facts == named(redis) | {OVERFLOW_PAGE}


async def test_a_page_named_before_the_quota_filled_keeps_counting_exactly() -> None:
    pages = ["/a", "/a", *(f"/new{i}" for i in range(10)), "/a", "/new9", "/a"]
    records = [record(i, f"e{i}", page=p, user=f"u{i}") for i, p in enumerate(pages)]
    pipeline, source, _, redis, _ = make(records)
    pipeline.max_pages = lambda site: 3
    await drain(pipeline, source, batch=4)
    assert ranking(redis)["/a"] == 4
    assert named(redis) == {"/a", "/new0", "/new1"}
    assert ranking(redis)[OVERFLOW_PAGE] == len(pages) - 4 - 2
    assert views(redis) == len(pages)


async def test_pieces_after_a_refusal_are_planned_with_the_refused_pages() -> None:
    pipeline, source, _, redis, _ = make(many_pages(60))
    pipeline.max_pages = lambda site: 10
    pipeline.max_script_cost = 200
    pipeline.redis = recording = RecordingStore(redis)
    await pipeline.process(await source.poll(60, 0))
    assert views(redis) == 60 and len(named(redis)) == 10
    assert ranking(redis)[OVERFLOW_PAGE] == 50
    assert source.committed == {0: 30, 1: 30}
    # A piece is refused at most once (its refusal is final), then applied with the refused
    # pages as (other): every range is sent once or twice, never more (how many pieces
    # depends on each event's cost, which the breakdown dimensions add to).
    tries = Counter(str(ranges) for ranges, _ in recording.calls)
    assert set(tries.values()) == {1, 2} and len(tries) >= 6


async def test_a_crash_between_two_pieces_of_an_over_quota_batch_counts_exactly() -> None:
    records = many_pages(60)
    pipeline, source, mongo, redis, _ = make(records)
    pipeline.max_pages = lambda site: 10
    pipeline.max_script_cost = 200
    pipeline.redis = RecordingStore(redis, fail_on_call=4)
    with pytest.raises(RuntimeError):
        await pipeline.process(await source.poll(60, 0))
    assert 0 < views(redis) < 60 and not source.committed

    restarted, _, _, _, _ = make(records)
    restarted.max_pages = lambda site: 10
    restarted.mongo, restarted.redis = mongo.sink(), redis
    source.rewind()
    await restarted.process(await source.poll(60, 0))
    assert views(redis) == 60
    assert len(named(redis)) == 10 and all(ranking(redis)[p] == 1 for p in named(redis))
    assert ranking(redis)[OVERFLOW_PAGE] == 50


async def test_the_overflow_page_is_always_admitted_and_takes_no_place_in_the_quota() -> None:
    # A record carrying "(other)" (an older gateway let it through) counts there.
    records = [record(0, "e0", page=OVERFLOW_PAGE), record(1, "e1", page="/a"),
               record(2, "e2", page="/b"), record(3, "e3", page="/c")]
    pipeline, source, _, redis, _ = make(records)
    pipeline.max_pages = lambda site: 2
    await drain(pipeline, source, batch=1)
    assert ranking(redis) == Counter({OVERFLOW_PAGE: 2, "/a": 1, "/b": 1})
    assert over_quota(pipeline.metrics) == 1  # only /c was over the quota


async def test_without_a_quota_every_page_is_named() -> None:
    pipeline, source, _, redis, _ = make(many_pages(30))
    pipeline.max_pages = lambda site: None
    await drain(pipeline, source, batch=7)
    assert len(named(redis)) == 30 and OVERFLOW_PAGE not in ranking(redis)


async def test_sites_have_their_own_quota() -> None:
    records = [record(i, f"e{i}", site=s, page=f"/p{i}") for i, s in
               enumerate(["small", "big"] * 10)]
    pipeline, source, _, redis, _ = make(records)
    pipeline.max_pages = {"small": 2, "big": 100}.__getitem__
    await drain(pipeline, source, batch=5)
    small, big = ranking(redis, "small"), ranking(redis, "big")
    assert len(small) == 3 and small[OVERFLOW_PAGE] == 8
    assert len(big) == 10


def events(*pages: str) -> list[PageView]:
    return [PageView(str(uuid.uuid4()), "s", p, f"u{i}", NOW, NOW) for i, p in enumerate(pages)]


def test_refused_pages_are_aggregated_as_the_overflow_page_in_every_aggregate() -> None:
    delta = aggregate(events("/a", "/b", "/c", "/b"), overflow={"/b", "/c"})
    facts = delta.pages[ALL_TIME]
    assert {p: f.views for p, f in facts.items()} == {"/a": 1, OVERFLOW_PAGE: 3}
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 4
    assert facts[OVERFLOW_PAGE].visitors == {"u1", "u2", "u3"}
    assert not any(page in {"/b", "/c"} for pages in delta.pages.values() for page in pages)


def test_the_quota_operation_lists_the_pages_to_name_and_comes_first() -> None:
    site = SiteKeys("s")
    ops = to_ops(site, aggregate(events("/b", "/a", OVERFLOW_PAGE)), Retention(), 7)
    quota = ops.ops[0]

    def key(at: object) -> str:
        return ops.keys[int(str(at)) - 1]

    assert quota[0] == PAGE_QUOTA and key(quota[1]) == site.key(NAMED_PAGES, ALL_TIME)
    assert key(quota[2]) == facts_key(site, OVERFLOW_PAGE)
    assert quota[3] == 7
    assert quota[4::2] == ["/a", "/b"]  # (other) is never checked
    assert [key(k) for k in quota[5::2]] == [facts_key(site, "/a"), facts_key(site, "/b")]
    assert not any(op[0] == PAGE_QUOTA for op in ops.ops[1:])
    assert not any(op[0] == PAGE_QUOTA
                   for op in to_ops(site, aggregate(events("/a")), Retention()).ops)


def facts_key(site: SiteKeys, page: str, scope: Scope = ALL_TIME) -> str:
    return site.facts_of(scope, page)


def test_the_gateway_refuses_the_overflow_page_as_a_page_id() -> None:
    policy = ValidationPolicy(now_ms=NOW)
    raw = {"page_id": OVERFLOW_PAGE, "user_id": "u", "site_id": "s"}
    with pytest.raises(InvalidEvent) as refused:
        validate_event(raw, policy, lambda: "id")
    assert refused.value.errors[0].field == "page_id"
    assert accept_json(b'[{"page_id": "(other)", "user_id": "u"}]', batch=True,
                       max_events=10, policy=policy, new_event_id=lambda: "id") is None
    assert validate_event({**raw, "page_id": "(others)"}, policy, lambda: "id")


def test_each_sites_quota_comes_from_the_registry_and_unknown_sites_get_the_default() -> None:
    registry = FixedRegistry(Registry(sites={"shop": Site("shop", max_pages=500)}, grants={}))
    max_pages = quota_of(registry)
    assert (max_pages("shop"), max_pages("nobody")) == (500, DEFAULT_MAX_PAGES)


DAY = Scope("d", 20000)


def snapshot(pages: dict[str, int], views_total: int, uvp: dict[str, int]) -> dict[str, object]:
    """A generation's snapshot (``Generations.snapshot``) holding ``pages`` in all time and
    one day; the pages in ``uvp`` promoted, their HyperLogLogs counting as given."""
    out: dict[str, object] = {"views:t": views_total}
    for scope in (ALL_TIME, DAY):
        out[f"top:{scope.token}"] = dict(pages)
        out[f"np:{scope.token}"] = len(pages)
        for page, n in pages.items():
            facts = out.setdefault(SiteKeys("s").suffix_of(facts_key(SiteKeys("s"), page, scope)),
                                   {})
            facts[page] = (n, None if page in uvp else frozenset())  # type: ignore[index]
    out.update({f"uvp:t:{p}": n for p, n in uvp.items()})
    return out


def facts_name(page: str, scope: Scope = ALL_TIME) -> str:
    return SiteKeys("s").suffix_of(facts_key(SiteKeys("s"), page, scope))


def compared(live: dict[str, object], rebuilt: dict[str, object]) -> list[str]:
    """Every name either side holds, each given an empty value on the side without it."""
    names = sorted(set(live) | set(rebuilt))
    for n in names:
        empty: object = {} if n.startswith(("top", "pf")) else 0
        live.setdefault(n, empty)
        rebuilt.setdefault(n, empty)
    return names


def test_verify_accepts_an_over_quota_site_whose_named_pages_differ_by_interleaving() -> None:
    live = snapshot({"/a": 5, "/b": 2, OVERFLOW_PAGE: 3}, 10, {"/a": 2, "/b": 1,
                                                             OVERFLOW_PAGE: 3})
    rebuilt = snapshot({"/a": 5, "/c": 2, OVERFLOW_PAGE: 3}, 10, {"/a": 2, "/c": 2,
                                                                OVERFLOW_PAGE: 2})
    assert diff("s", live, rebuilt, compared(live, rebuilt)) == []


def test_verify_still_reports_a_wrong_count_of_a_page_named_on_both_sides() -> None:
    live = snapshot({"/a": 6, "/b": 2, OVERFLOW_PAGE: 2}, 10, {"/a": 2, "/b": 1})
    rebuilt = snapshot({"/a": 5, "/c": 2, OVERFLOW_PAGE: 3}, 10, {"/a": 3, "/c": 1})
    found = {(d.aggregate, d.field) for d in diff("s", live, rebuilt, compared(live, rebuilt))}
    assert found == {(facts_name("/a"), "/a"), (facts_name("/a", DAY), "/a"),
                     ("uvp:t:/a", "")}


def test_verify_reports_the_sites_views_when_named_pages_differ() -> None:
    live = snapshot({"/a": 5, "/b": 2, OVERFLOW_PAGE: 4}, 11, {})
    rebuilt = snapshot({"/a": 5, "/c": 2, OVERFLOW_PAGE: 3}, 10, {})
    found = {(d.aggregate, d.field) for d in diff("s", live, rebuilt, compared(live, rebuilt))}
    assert found == {("views:t", "")}


def test_verify_reports_inline_visitors_that_differ() -> None:
    live, rebuilt = snapshot({"/a": 5}, 5, {}), snapshot({"/a": 5}, 5, {})
    live[facts_name("/a")] = {"/a": (5, frozenset({"AAAAAAAA", "BBBBBBBB"}))}
    rebuilt[facts_name("/a")] = {"/a": (5, frozenset({"AAAAAAAA"}))}
    found = [(d.aggregate, d.field, d.live, d.rebuilt)
             for d in diff("s", live, rebuilt, compared(live, rebuilt))]
    assert found == [(facts_name("/a"), "/a visitors", 2, 1)]


def test_verify_compares_everything_when_both_sides_name_the_same_pages() -> None:
    live = snapshot({"/a": 5, OVERFLOW_PAGE: 4}, 9, {OVERFLOW_PAGE: 3})
    rebuilt = snapshot({"/a": 5, OVERFLOW_PAGE: 5}, 10, {OVERFLOW_PAGE: 3})
    found = {(d.aggregate, d.field) for d in diff("s", live, rebuilt, compared(live, rebuilt))}
    assert found == {(facts_name(OVERFLOW_PAGE), OVERFLOW_PAGE),
                     (facts_name(OVERFLOW_PAGE, DAY), OVERFLOW_PAGE),
                     ("top:t", OVERFLOW_PAGE), (f"top:{DAY.token}", OVERFLOW_PAGE),
                     ("views:t", "")}


class SwitchingStore(RecordingStore):
    """Once a piece with ``/x`` refused applied, a rebuild switches the site to generation
    "1", which names ``/x`` (its partitions interleaved otherwise) and holds that piece."""

    async def apply_ranges(self, ops, ranges, live=True):  # type: ignore[no-untyped-def]
        stored = await super().apply_ranges(ops, ranges, live)
        inner = self._inner
        folded = OVERFLOW_PAGE in inner.page_views(SiteKeys("s"))
        if stored is None and folded and not inner.pointers:
            rebuilt = SiteKeys("s", "1")
            inner.pointers["s"] = "1"
            for page in ("/a", "/x"):
                inner.facts[facts_key(rebuilt, page)][page] = (1, {page})
            inner.counters[rebuilt.key(NAMED_PAGES, ALL_TIME)] = 2
            inner.offsets[rebuilt.applied_offsets()] = {p: last for p, (_, last) in
                                                        ranges.items()}
            self.switched_after = max(last for _, last in ranges.values())
        return stored


async def test_refusals_of_the_old_generation_do_not_follow_a_switch_to_a_new_one() -> None:
    pages = ["/a", "/x", "/x", "/x", "/x", "/x"]
    records = [record(i, f"e{i}", page=p, user=f"u{i}") for i, p in enumerate(pages)]
    pipeline, source, _, redis, _ = make(records)
    pipeline.max_pages = lambda site: 1
    pipeline.max_script_cost = 12  # a piece of two events each
    pipeline.redis = SwitchingStore(redis)
    await pipeline.process(await source.poll(6, 0))
    rebuilt = redis.page_views(SiteKeys("s", "1"))
    assert redis.pointers == {"s": "1"}
    after = sum(1 for i, p in enumerate(pages) if p == "/x" and i > pipeline.redis.switched_after)
    assert after >= 2
    assert rebuilt["/x"] == 1 + after and OVERFLOW_PAGE not in rebuilt  # /x is named there
