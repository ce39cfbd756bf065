"""Hot sites without servers: how an event finds its unit, how the shard count travels with
the event (so redeliveries and rebuilds route it as live counting did), the registry's
rules for raising the count, and the pipeline's exactness over units."""

from __future__ import annotations

import dataclasses
from collections import Counter

import bson
import pytest
from redis.crc import key_slot

from aggregator.counting.pipeline import decode_all, group_by_site, unit_of_event
from aggregator.counting.source import Record
from aggregator.page_quota import quota_of
from contracts.aggregates import ALL_TIME, VIEWS
from contracts.event import MAX_SHARDS, PageView, UndecodableRecord, decode_event, encode_event
from contracts.keys import CLUSTER_SLOTS, SiteKeys, shard_of, site_of_unit, unit_of, units_of
from contracts.mongo import event_document, page_view_of
from contracts.page_facts import GROUPS, group_of
from contracts.registry import FixedRegistry
from contracts.tenancy import SHARDS_SETTLE_MS, Registry, Site, shard_fields, site_of
from ingest_gateway.admission import stamp_shards
from query_api.sharded_reader import _summed
from tests.unit.test_pipeline import NOW, drain, make

PAGES = [f"/page/{i}" for i in range(4000)]


def hot(event_id: str, page: str, shards: int = 4, site: str = "shop") -> PageView:
    return PageView(event_id, site, page, "u", NOW, NOW, shards=shards)


def test_units_are_the_site_itself_and_numbered_tags_of_their_own() -> None:
    assert units_of("shop", 1) == ["shop"]
    units = units_of("shop", 4)
    assert units[0] == "shop" and [u.split(".")[0] for u in units[1:]] == [
        "shop#1", "shop#2", "shop#3"]
    assert units_of("shop", 8)[:4] == units  # a count that grows keeps its units
    assert {site_of_unit(u) for u in units} == {"shop"}
    assert len({key_slot(u.encode()) for u in units}) == 4  # four cluster slots
    assert all(unit_of("shop", p, 1) == "shop" for p in PAGES[:50])


@pytest.mark.parametrize(("shards", "most"), [(2, 1), (3, 2), (4, 2), (8, 3), (16, 6)])
def test_units_are_placed_about_evenly_over_three_masters(shards: int, most: int) -> None:
    """Three masters owning equal slot ranges (as ``redis-cli --cluster create`` makes):
    however the site id hashes, no master holds more than its share, rounded up, plus one."""
    for i in range(200):
        per_master = Counter(key_slot(u.encode()) * 3 // CLUSTER_SLOTS
                             for u in units_of(f"site-{i}", shards))
        assert max(per_master.values()) <= most, (i, per_master)


def test_pages_spread_evenly_and_each_unit_still_fills_every_facts_hash() -> None:
    per_unit = Counter(unit_of("shop", p, 4) for p in PAGES)
    assert set(per_unit) == set(units_of("shop", 4))
    assert min(per_unit.values()) > len(PAGES) / 4 * 0.85
    for unit in per_unit:  # the unit hash is not the facts group's CRC
        groups = {group_of(p, None) for p in PAGES if unit_of("shop", p, 4) == unit}
        assert len(groups) == GROUPS[None]
    assert all(shard_of(p, 4) == shard_of(p, 4) < 4 for p in PAGES[:100])


def test_the_shard_count_travels_with_the_record_and_the_stored_event() -> None:
    event = hot("e1", "/a", shards=4)
    assert decode_event(encode_event(event)) == event
    assert b"shards" not in encode_event(dataclasses.replace(event, shards=1))
    assert page_view_of(bson.decode(bson.encode(event_document(event, 0, 7)))) == event
    assert "shards" not in event_document(dataclasses.replace(event, shards=1), 0, 7)


@pytest.mark.parametrize("bad", [b"0", str(MAX_SHARDS + 1).encode(), b'"4"', b"2.0", b"true"])
def test_a_record_with_a_shard_count_out_of_bounds_is_undecodable(bad: bytes) -> None:
    value = encode_event(hot("e1", "/a")).replace(b'"shards":4', b'"shards":' + bad)
    with pytest.raises(UndecodableRecord, match="shards"):
        decode_event(value)


def test_gateways_stamp_a_raised_count_only_once_it_settled() -> None:
    raised_at = NOW
    registry = Registry(sites={
        "shop": Site("shop", shards=4, shards_from=2, shards_raised_ms=raised_at),
        "blog": Site("blog")}, grants={})
    events = [PageView("e1", "shop", "/a", "u", NOW, NOW), PageView("e2", "blog", "/", "u", NOW,
                                                                     NOW)]
    early = stamp_shards(events, registry, raised_at + SHARDS_SETTLE_MS - 1)
    late = stamp_shards(events, registry, raised_at + SHARDS_SETTLE_MS)
    assert [e.shards for e in early] == [2, 1] and [e.shards for e in late] == [4, 1]
    assert late[1] is events[1]  # other sites' events are not copied
    plain = [events[1]]
    assert stamp_shards(plain, registry, NOW) is plain


def test_the_shard_count_only_grows_and_records_what_it_was() -> None:
    assert shard_fields(None, 4, 123) == {"shards": 4, "shards_from": 1, "shards_raised_ms": 123}
    two = Site("shop", shards=2)
    assert shard_fields(two, 2, 123) == {}
    assert shard_fields(two, 8, 123) == {"shards": 8, "shards_from": 2, "shards_raised_ms": 123}
    with pytest.raises(ValueError, match="can only grow"):
        shard_fields(two, 1, 123)
    parsed = site_of({"_id": "shop", "shards": 99, "shards_from": 2, "shards_raised_ms": 5})
    assert parsed is not None
    assert (parsed.shards, parsed.shards_from, parsed.shards_raised_ms) == (MAX_SHARDS, 2, 5)
    legacy = site_of({"_id": "shop"})
    assert legacy is not None and legacy.shards_to_stamp(NOW) == 1


def test_each_unit_gets_its_share_of_the_page_quota() -> None:
    quota = quota_of(FixedRegistry(Registry(
        sites={"shop": Site("shop", max_pages=1000, shards=3), "blog": Site("blog", 500)},
        grants={})))
    assert [quota(u) for u in units_of("shop", 3)] == [334, 334, 334]
    assert quota("blog") == 500


def test_records_are_grouped_by_the_unit_their_stamp_names() -> None:
    records = [Record(0, i, b"k", encode_event(hot(f"e{i}", PAGES[i], shards=s)))
               for i, s in enumerate([1, 4, 4, 4, 2, 4, 1, 4])]
    located, _ = decode_all(records)
    groups = group_by_site(located)
    assert sum(len(g) for unit in groups.values() for g in unit.values()) == 8
    for unit, by_partition in groups.items():
        for r in by_partition[0]:
            assert unit == unit_of_event(r.event) == unit_of("shop", r.event.page_id,
                                                             r.event.shards)


async def test_a_hot_sites_units_count_exactly_once_through_a_redelivery() -> None:
    records = [Record(i % 2, i, b"k", encode_event(hot(f"e{i}", PAGES[i % 40])))
               for i in range(200)]
    pipeline, source, _, redis, _ = make(records)
    await drain(pipeline, source, batch=7)
    source.committed.clear()  # the commit was lost: everything comes again
    source.rewind()
    await drain(pipeline, source, batch=11)
    shares = {u: redis.counters.get(SiteKeys(u).key(VIEWS, ALL_TIME), 0)
              for u in units_of("shop", 4)}
    expected = Counter(unit_of("shop", PAGES[i % 40], 4) for i in range(200))
    assert shares == dict(expected) and sum(shares.values()) == 200


def test_units_add_up_by_count_then_member() -> None:
    assert _summed([{"/a": 2, "/b": 5}, {"/a": 4, "/c": 1}, {}]) == [
        ("/a", 6), ("/b", 5), ("/c", 1)]
    assert _summed([{"/b": 1}, {"/a": 1}]) == [("/a", 1), ("/b", 1)]
