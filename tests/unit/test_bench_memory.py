"""bench.memory's load and arithmetic: the soak's events are valid, spread over its fresh
sites and counted per site as sent; growth per event is what Redis grew by, per event, and
what the topic's files (per copy) and the events collection grew by, per event."""

from __future__ import annotations

import fnmatch
import os
import random
from pathlib import Path

import orjson
import pytest

from bench.memory import (
    SOAK_BYTES_PER_EVENT,
    Footprint,
    NoRoom,
    OnDisk,
    Soak,
    Stored,
    broker_dirs,
    check_room,
    disk_growth,
    growth_per_event,
    store_growth,
    store_rows,
    topic_files,
)
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


def test_the_topic_is_read_on_every_broker_of_the_stacks_layout(tmp_path: Path) -> None:
    assert broker_dirs(tmp_path, 1) == [tmp_path / "kafka"]
    assert broker_dirs(tmp_path, 3) == [tmp_path / f"kafka-{i}" for i in (1, 2, 3)]
    for broker in ("kafka-1", "kafka-2"):
        for directory in ("page-views-0", "page-views-5", "page-views-dead-letters-0",
                          "__consumer_offsets-0"):
            (tmp_path / broker / directory).mkdir(parents=True)
            (tmp_path / broker / directory / "00000000000000000000.log").write_bytes(b"x" * 1000)
    files = topic_files(broker_dirs(tmp_path, 2), "page-views")
    assert sorted(Path(f).parent.name for f in files) == ["page-views-0", "page-views-0",
                                                          "page-views-5", "page-views-5"]
    assert set(files.values()) == {1000}


def test_a_preallocated_sparse_index_counts_only_what_was_written(tmp_path: Path) -> None:
    partition = tmp_path / "kafka" / "page-views-0"
    partition.mkdir(parents=True)
    index = partition / "00000000000000000000.index"
    index.touch()
    os.truncate(index, 10 * 1024 * 1024)  # Kafka preallocates 10 MiB, writes nothing yet
    assert topic_files([tmp_path / "kafka"], "page-views")[str(index)] < 1024 * 1024


def test_disk_growth_counts_grown_and_new_files_and_never_less_than_nothing() -> None:
    before = {"a.log": 1000, "b.index": 800, "old.log": 9000}
    after = {"a.log": 1500, "b.index": 400, "c.log": 200}  # old.log deleted by retention,
    assert disk_growth(before, after) == 700  # b.index trimmed when its segment rolled


def test_store_growth_is_per_acknowledged_event_and_copy_and_per_event_counted() -> None:
    before = OnDisk({"a.log": 1000}, Stored(10_000, 10_000, 4_000))
    after = OnDisk({"a.log": 601_000, "b.log": 300_000}, Stored(700_000, 700_000, 314_000))
    growth = store_growth(before, after, acknowledged=1000, counted=1000, copies=3)
    assert growth["kafka"]["bytes_per_event"] == 300.0  # 900,000 B over 3 copies
    assert growth["mongo"]["bytes_per_event"] == 1000.0  # 690,000 + 310,000
    assert growth["mongo"]["index_bytes_per_event"] == 310.0
    rows = store_rows(Footprint(0, 0), Footprint(5000, 10), 5.0, growth)
    assert [r[-1] for r in rows] == ["5.0", "300.0", "1,000.0"]


def test_stores_not_found_are_recorded_as_not_measured() -> None:
    growth = store_growth(OnDisk({}, None), OnDisk({}, None), 1000, 1000, 1)
    assert growth == {"kafka": None, "mongo": None}
    rows = store_rows(Footprint(0, 0), Footprint(0, 0), None, growth)
    assert [r[1] for r in rows[1:]] == ["no topic files found", "collStats not answered"]
    assert store_growth(OnDisk({}, None), OnDisk({"a": 1}, None), 0, 0, 1)["kafka"][
        "bytes_per_event"] is None


def test_a_soak_that_would_fill_redis_is_refused_before_it_starts() -> None:
    """Runs add up (the soak's day and all-time keys stay): one that would reach maxmemory
    would stall every aggregator midway, as it did on a stack holding three earlier runs."""
    events = 300_000
    need = events * SOAK_BYTES_PER_EVENT
    check_room(Footprint(10**9, 1, 0), events)  # no bound
    check_room(Footprint(10**9, 1, 10**9 + need), events)  # just room
    with pytest.raises(NoRoom, match="REDIS_MAXMEMORY"):
        check_room(Footprint(10**9, 1, 10**9 + need - 1), events)
