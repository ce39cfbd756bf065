"""Event ids, Redis key layout and time buckets: the small contracts services share."""

from __future__ import annotations

import itertools
import uuid

from contracts.aggregates import ALL_TIME, CATALOG, PAGE_VISITORS, VIEWS, Scope, scopes_of
from contracts.ids import event_id_factory, pooled_urandom, uuid7
from contracts.keys import SiteKeys
from contracts.settings import Retention
from contracts.timebuckets import iso_z


def test_uuid7_is_a_valid_version_7_uuid_carrying_the_time() -> None:
    value = uuid.UUID(uuid7(1_795_860_000_000, bytes(range(10))))
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == 1_795_860_000_000


def test_generated_ids_sort_by_time() -> None:
    clock = iter([1000, 2000, 3000])
    make = event_id_factory(lambda: next(clock))
    ids = [make(), make(), make()]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_ten_thousand_ids_from_a_tight_loop_are_strictly_increasing() -> None:
    make = event_id_factory()
    ids = [make() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_ids_within_one_millisecond_keep_that_millisecond_and_increase() -> None:
    make = event_id_factory(lambda: 1_795_860_000_000)
    ids = [make() for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert {uuid.UUID(i).int >> 80 for i in ids} == {1_795_860_000_000}


def test_ids_keep_increasing_when_the_clock_steps_back() -> None:
    clock = iter([5000, 5000, 4000, 4999, 6000])
    make = event_id_factory(lambda: next(clock))
    ids = [make() for _ in range(5)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert [uuid.UUID(i).int >> 80 for i in ids] == [5000, 5000, 5000, 5000, 6000]


def test_every_key_of_a_site_carries_the_site_hash_tag() -> None:
    keys = SiteKeys("shop.example")
    names = [keys.applied_offsets(), keys.generation_pointer()]
    names += [keys.key(a, scope, "/p" if a.per_page else None)
              for a in CATALOG for scope in (ALL_TIME, Scope("m", 1), Scope("h", 2),
                                             Scope("d", 3))]
    assert all("{shop.example}" in name for name in names)
    assert len(set(names)) == len(names)


def test_generations_do_not_share_keys() -> None:
    assert SiteKeys("s", "1").key(VIEWS, ALL_TIME) != SiteKeys("s", "2").key(VIEWS, ALL_TIME)


def test_minute_buckets_expire_and_day_buckets_stay() -> None:
    assert Retention().ttl_of("m") == 48 * 3600
    assert Retention().ttl_of("h") == 90 * 24 * 3600
    assert Retention().ttl_of("d") is None


def test_buckets_are_utc_epoch_units() -> None:
    scopes = {s.unit: s for s in scopes_of(1_795_860_000_000 + 61_000)}  # 10:01:01Z
    assert iso_z(scopes["m"].start_ms) == "2026-11-28T10:01:00Z"
    assert iso_z(scopes["h"].start_ms) == "2026-11-28T10:00:00Z"
    assert iso_z(scopes["d"].start_ms) == "2026-11-28T00:00:00Z"
    assert scopes[None] == ALL_TIME


def test_an_aggregate_is_named_alike_in_every_generation() -> None:
    live, rebuilt = SiteKeys("shop"), SiteKeys("shop", "r17")
    name = live.suffix_of(live.key(PAGE_VISITORS, Scope("h", 490_000), "a:b"))
    assert name == "uvp:h490000:a:b"
    assert rebuilt.named(name) == rebuilt.key(PAGE_VISITORS, Scope("h", 490_000), "a:b")


def test_pooled_random_bytes_hand_out_each_byte_of_a_system_read_once() -> None:
    take = pooled_urandom(chunk=64)
    pieces = [take(10) for _ in range(20)] + [take(100)]
    assert [len(p) for p in pieces] == [10] * 20 + [100]
    assert len(set(pieces)) == len(pieces)  # 80 random bits each: no repeats
