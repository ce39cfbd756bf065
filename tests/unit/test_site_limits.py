"""The per-site token buckets (ingest_gateway.site_limits) on an injected clock."""

from __future__ import annotations

import pytest

from contracts.event import PageView
from contracts.tenancy import DEFAULT_MAX_EVENTS_PER_S, Site, registry_of, site_document
from ingest_gateway.site_limits import (
    PRUNE_EVERY_S,
    Refusal,
    SiteRateLimiter,
    events_by_site,
    retry_after_header,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sites(*given: Site) -> dict[str, Site]:
    return {s.site_id: s for s in given}


SHOP = Site("shop", max_events_per_s=10, burst_events=20)
BLOG = Site("blog", max_events_per_s=100)


def test_a_quiet_site_gets_its_whole_burst_at_once_and_then_its_rate(clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 20}, sites(SHOP)) == []
    [refusal] = limiter.admit({"shop": 1}, sites(SHOP))
    assert refusal.site == SHOP and refusal.retry_after_s == pytest.approx(0.1)
    clock.now += 0.5  # five events' worth
    assert limiter.admit({"shop": 5}, sites(SHOP)) == []
    assert limiter.admit({"shop": 1}, sites(SHOP)) != []


def test_the_bucket_never_holds_more_than_the_burst(clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    clock.now += 3600
    assert limiter.admit({"shop": 20}, sites(SHOP)) == []
    assert limiter.admit({"shop": 1}, sites(SHOP)) != []


def test_a_refused_request_takes_nothing(clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 15}, sites(SHOP)) == []
    assert limiter.admit({"shop": 10}, sites(SHOP)) != []  # 5 left
    assert limiter.admit({"shop": 5}, sites(SHOP)) == []


def test_a_request_is_judged_against_each_of_its_sites_and_takes_from_all_or_none(
        clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 20}, sites(SHOP, BLOG)) == []
    refused = limiter.admit({"blog": 50, "shop": 1}, sites(SHOP, BLOG))
    assert [r.site.site_id for r in refused] == ["shop"]
    assert limiter.admit({"blog": 100}, sites(SHOP, BLOG)) == []  # blog lost nothing


def test_sites_have_buckets_of_their_own(clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 20}, sites(SHOP, BLOG)) == []
    assert limiter.admit({"blog": 100}, sites(SHOP, BLOG)) == []
    assert limiter.admit({"shop": 1}, sites(SHOP, BLOG)) != []


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt(
        clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 50}, sites(SHOP)) == []  # never refused for ever
    [refusal] = limiter.admit({"shop": 50}, sites(SHOP))
    assert refusal.retry_after_s == pytest.approx(5.0)  # 30 owed + a full 20, at 10/s
    clock.now += 4.9
    assert limiter.admit({"shop": 50}, sites(SHOP)) != []
    clock.now += 0.1
    assert limiter.admit({"shop": 50}, sites(SHOP)) == []


def test_a_changed_limit_applies_at_the_next_request(clock: Clock) -> None:
    limiter = SiteRateLimiter(clock)
    assert limiter.admit({"shop": 20}, sites(SHOP)) == []
    assert limiter.admit({"shop": 1}, sites(SHOP)) != []
    faster = Site("shop", max_events_per_s=1000, burst_events=1000)
    clock.now += 0.1  # 100 events at the new rate
    assert limiter.admit({"shop": 100}, sites(faster)) == []
    slower = Site("shop", max_events_per_s=1, burst_events=1)
    clock.now += 60
    assert limiter.admit({"shop": 1}, sites(slower)) == []
    assert limiter.admit({"shop": 1}, sites(slower)) != []


def test_buckets_that_are_full_again_are_dropped_and_the_others_kept(clock: Clock) -> None:
    registered = sites(*(Site(f"s{i}", max_events_per_s=10) for i in range(100)),
                       Site("busy", max_events_per_s=1, burst_events=100))
    limiter = SiteRateLimiter(clock)
    for site in registered.values():  # each empties its bucket
        assert limiter.admit({site.site_id: site.burst}, registered) == []
    assert len(limiter) == 101
    clock.now += PRUNE_EVERY_S  # the small ones are full again after 1 s, busy after 100 s
    assert limiter.admit({"s0": 5}, registered) == []
    assert len(limiter) == 2  # s0's new one and busy's
    assert limiter.admit({"busy": 100}, registered) != []  # busy kept what it owes


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    def after(*waits: float) -> str:
        return retry_after_header([Refusal(SHOP, w) for w in waits])
    assert after(0.01) == "1"
    assert after(1.0) == "1"
    assert after(1.01, 0.2) == "2"
    assert after(0.5, 7.3) == "8"


def test_the_registry_keeps_the_limits_and_defaults_missing_or_bad_ones() -> None:
    stored = [site_document(Site("shop", max_events_per_s=500, burst_events=800)),
              {"_id": "old"}, {"_id": "bad", "max_events_per_s": 0, "burst_events": "x"},
              {"_id": "flag", "max_events_per_s": True}]
    registry = registry_of(stored, [])
    assert (registry.sites["shop"].max_events_per_s, registry.sites["shop"].burst) == (500, 800)
    for name in ("old", "bad", "flag"):
        site = registry.sites[name]
        assert (site.max_events_per_s, site.burst) == (DEFAULT_MAX_EVENTS_PER_S,
                                                       DEFAULT_MAX_EVENTS_PER_S)


def test_events_are_counted_by_site_whether_one_site_or_several() -> None:
    def of(*sites: str) -> list[PageView]:
        return [PageView(f"e{i}", s, "/", "u", 0, 0) for i, s in enumerate(sites)]
    assert events_by_site(of("shop")) == {"shop": 1}
    assert events_by_site(of("shop", "shop", "shop")) == {"shop": 3}
    assert events_by_site(of("shop", "blog", "shop", "news")) == {"shop": 2, "blog": 1,
                                                                   "news": 1}
