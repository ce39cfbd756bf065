"""bench.memory's load and arithmetic: the soak's events are valid, spread over its fresh
sites and counted per site as sent; growth per event is what Redis grew by, per event."""

from __future__ import annotations

import fnmatch
import random

import orjson

from bench.memory import Footprint, Soak, growth_per_event
from contracts.event import ValidationPolicy, validate_batch
from contracts.keys import SiteKeys

NOW = 1_796_300_000_000


def test_the_soak_sends_valid_events_over_its_sites_and_counts_them_per_site() -> None:
    soak = Soak.fresh(count=5)
    assert len(set(soak.sites)) == 5 and Soak.fresh(count=5).sites != soak.sites  # new ids
    make = soak.batches()
    rng = random.Random(3)
    sent: dict[str, int] = {}
    pages: set[str] = set()
    for _ in range(200):
        body, per_site = make(rng, 20, NOW)
        events = validate_batch(orjson.loads(body), ValidationPolicy(NOW), lambda: "x")
        assert len(events) == 20 and sum(per_site.values()) == 20
        for e in events:
            sent[e.site_id] = sent.get(e.site_id, 0) + 1
            pages.add(e.page_id)
        for site, n in per_site.items():
            sent[site] -= n
    assert set(sent) == set(soak.sites) and set(sent.values()) == {0}
    assert len(pages) > 1000  # 4,000 draws over 20,000 pages: mostly new pages


def test_growth_per_event_divides_what_redis_grew_by() -> None:
    before, after = Footprint(1_000_000, 100), Footprint(1_900_000, 600)
    assert growth_per_event(before, after, 1000) == (900.0, 0.5)
    assert growth_per_event(before, after, 0) == (None, None)


def test_the_key_pattern_matches_the_soaks_sites_keys_and_no_other_run() -> None:
    soak, other = Soak.fresh(count=3), Soak.fresh(count=3)
    pattern = soak.key_match()
    assert all(fnmatch.fnmatchcase(SiteKeys(site).named("views:t"), pattern)
               for site in soak.sites)
    assert not any(fnmatch.fnmatchcase(SiteKeys(site).named("views:t"), pattern)
                   for site in other.sites)
