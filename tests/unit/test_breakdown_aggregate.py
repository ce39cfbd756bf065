"""Breakdowns at aggregation time: bots count only as filtered, named events only per name,
page views in every dimension; each dimension's quota folds new values into ``(other)``
exactly, through the same refusal-and-retry the page quota uses."""

from __future__ import annotations

from collections import Counter

from aggregator.counting.aggregate import QUOTA, aggregate, to_ops
from aggregator.counting.source import Record
from contracts.aggregates import (
    ALL_TIME,
    BROWSER,
    DEVICE,
    DIMENSION_RANKINGS,
    DIMENSION_VISITORS,
    DIMENSIONS,
    EVENT,
    FILTERED,
    OS,
    OVERFLOW_PAGE,
    SOURCE,
    UTM_CAMPAIGN,
    UTM_MEDIUM,
    UTM_SOURCE,
    VIEWS,
    VISITORS,
    Dimension,
    Scope,
    overflow_token,
)
from contracts.event import PageView, encode_event
from contracts.keys import SiteKeys
from contracts.settings import Retention
from tests.unit.fakes import FakeAggregateStore
from tests.unit.test_dimensions import CHROME_WIN, PEOPLE
from tests.unit.test_pipeline import NOW, make

IPHONE = PEOPLE[3][0]
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/156.0.0.0 Safari/537.36")


def view(n: int, ua: str | None = CHROME_WIN, referrer: str | None = None,
         name: str | None = None, user: str = "u1", utm_source: str | None = None,
         utm_medium: str | None = None, utm_campaign: str | None = None) -> PageView:
    return PageView(f"e{n}", "s", "/p", user, NOW, NOW, name=name, user_agent=ua,
                    referrer=referrer, host="shop.example", utm_source=utm_source,
                    utm_medium=utm_medium, utm_campaign=utm_campaign)


def ranked(delta_or_store: object, dimension: Dimension, scope: Scope = ALL_TIME
           ) -> Counter[str]:
    ranking = DIMENSION_RANKINGS[dimension]
    if isinstance(delta_or_store, FakeAggregateStore):
        stored = delta_or_store.sorted_sets[SiteKeys("s").key(ranking, scope)]
        return Counter({v: -n for v, n in stored.items()})
    return delta_or_store.rankings[(ranking, scope, None)]  # type: ignore[attr-defined, no-any-return]


def test_a_page_view_counts_in_every_dimension_with_its_visitor() -> None:
    delta = aggregate([
        view(1, referrer="https://www.google.com/", utm_source="news", utm_medium="email",
             utm_campaign="dec"),
        view(2, ua=IPHONE, referrer="https://news.ycombinator.com/", user="u2"),
        view(3, ua=IPHONE, referrer="https://shop.example/pricing", user="u2"),  # self
    ])
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 3
    assert ranked(delta, SOURCE) == {"Google": 1, "Hacker News": 1}
    assert ranked(delta, UTM_SOURCE) == {"news": 1}
    assert ranked(delta, UTM_MEDIUM) == {"email": 1}
    assert ranked(delta, UTM_CAMPAIGN) == {"dec": 1}
    assert ranked(delta, DEVICE) == {"Desktop": 1, "Mobile": 2}
    assert ranked(delta, BROWSER) == {"Chrome": 1, "Safari": 2}
    assert ranked(delta, OS) == {"Windows": 1, "iOS": 2}
    assert delta.uniques[(DIMENSION_VISITORS[DEVICE], ALL_TIME, "Mobile")] == {"u2"}
    assert delta.uniques[(DIMENSION_VISITORS[SOURCE], ALL_TIME, "Google")] == {"u1"}
    assert not ranked(delta, EVENT)
    hour = Scope("h", NOW // 3_600_000)
    assert ranked(delta, BROWSER, hour) == {"Chrome": 1, "Safari": 2}


def test_bots_count_only_as_filtered() -> None:
    delta = aggregate([view(1, ua=GOOGLEBOT), view(2, ua=HEADLESS), view(3, ua=""),
                       view(4, ua=GOOGLEBOT, name="signup"), view(5)])
    assert delta.counters[(FILTERED, ALL_TIME, None)] == 4
    assert delta.counters[(FILTERED, Scope("d", NOW // 86_400_000), None)] == 4
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 1
    assert delta.uniques[(VISITORS, ALL_TIME, None)] == {"u1"}
    assert ranked(delta, BROWSER) == {"Chrome": 1}
    assert not ranked(delta, EVENT)


def test_a_tracker_event_without_a_user_agent_header_is_a_bot() -> None:
    headerless = PageView("e1", "s", "/p", "u1", NOW, NOW, via="plausible")
    delta = aggregate([headerless, view(2, ua=None)])
    assert delta.counters[(FILTERED, ALL_TIME, None)] == 1
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 1


def test_events_of_our_own_formats_are_never_bots_and_in_no_breakdown() -> None:
    delta = aggregate([view(1, ua=None), view(2, ua=None, user="u2")])
    assert (FILTERED, ALL_TIME, None) not in delta.counters
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 2
    assert all(not ranked(delta, d) for d in DIMENSIONS)
    assert not [t for t in delta.uniques if t[0] in DIMENSION_VISITORS.values()]


def test_an_event_of_our_own_formats_with_a_referrer_is_in_the_breakdowns() -> None:
    delta = aggregate([view(1, ua=None, referrer="https://news.ycombinator.com/")])
    assert ranked(delta, SOURCE) == {"Hacker News": 1}
    assert ranked(delta, DEVICE) == ranked(delta, OS) == {"(unknown)": 1}


def test_named_events_count_only_per_name_with_their_visitors() -> None:
    delta = aggregate([view(1, name="engagement"), view(2, name="engagement", user="u2"),
                       view(3, name="signup"), view(4)])
    assert delta.counters[(VIEWS, ALL_TIME, None)] == 1
    assert ranked(delta, EVENT) == {"engagement": 2, "signup": 1}
    assert delta.uniques[(DIMENSION_VISITORS[EVENT], ALL_TIME, "engagement")] == {"u1", "u2"}
    assert ranked(delta, BROWSER) == {"Chrome": 1}


def test_refused_values_count_as_other_in_their_dimension_only() -> None:
    refused = {overflow_token(UTM_CAMPAIGN, "b")}
    delta = aggregate([view(1, utm_campaign="a"), view(2, utm_campaign="b"),
                       view(3, utm_source="b")], refused)
    assert ranked(delta, UTM_CAMPAIGN) == {"a": 1, OVERFLOW_PAGE: 1}
    assert ranked(delta, UTM_SOURCE) == {"b": 1}


def test_each_dimension_has_a_tagged_quota_operation() -> None:
    site = SiteKeys("s")
    ops = to_ops(site, aggregate([view(1, utm_campaign="a")]), Retention())
    quotas = {ops.keys[int(str(op[1])) - 1]: op[2:] for op in ops.ops if op[0] == QUOTA}
    assert quotas[site.key(DIMENSION_RANKINGS[UTM_CAMPAIGN], ALL_TIME)] == [
        overflow_token(UTM_CAMPAIGN, ""), UTM_CAMPAIGN.max_values, "a"]
    assert site.key(DIMENSION_RANKINGS[EVENT], ALL_TIME) not in quotas  # nothing to name


async def test_client_controlled_values_past_the_quota_fold_into_other_exactly() -> None:
    campaigns = [f"c{i}" for i in range(UTM_CAMPAIGN.max_values + 25)]
    events = [view(i, utm_campaign=c, user=f"u{i}") for i, c in enumerate(campaigns)]
    events += [view(len(events) + i, utm_campaign="c0") for i in range(3)]
    records = [Record(i % 2, i // 2, e.kafka_key, encode_event(e)) for i, e in enumerate(events)]
    pipeline, source, _, redis, _ = make(records)
    while batch := await source.poll(97, 0):
        await pipeline.process(batch)
    counted = ranked(redis, UTM_CAMPAIGN)
    assert len(set(counted) - {OVERFLOW_PAGE}) == UTM_CAMPAIGN.max_values
    assert sum(counted.values()) == len(events)
    assert counted[OVERFLOW_PAGE] == 25
    assert counted["c0"] == 4
    assert redis.counters[SiteKeys("s").key(VIEWS, ALL_TIME)] == len(events)
    assert ranked(redis, BROWSER) == {"Chrome": len(events)}


async def test_bots_are_shown_per_site_on_metrics_once_applied() -> None:
    events = [view(1, ua=GOOGLEBOT), view(2, ua=None), view(3, ua=HEADLESS), view(4)]
    records = [Record(0, i, e.kafka_key, encode_event(e)) for i, e in enumerate(events)]
    pipeline, source, _, redis, _ = make(records)
    await pipeline.process(await source.poll(10, 0))
    sample = pipeline.metrics.registry.get_sample_value(
        "aggregator_events_filtered_total", {"site": "s", "reason": "bot"})
    assert sample == 2
    assert redis.counters[SiteKeys("s").key(FILTERED, ALL_TIME)] == 2
