"""Ranges, bucket tiling and retention of the query API: pure functions, named cases."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest

from contracts.settings import Retention
from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, datetime_to_ms
from query_api.params import BadParameter
from query_api.ranges import ALL_TIME, TimeRange, parse_range, period_range
from query_api.service import redis_can_answer
from query_api.tiling import Bucket, retained, slot_count, slots, tile

# 2026-11-28T10:17:42.500Z
NOW = datetime_to_ms(datetime(2026, 11, 28, 10, 17, 42, 500000, tzinfo=UTC))
DAY = NOW // DAY_MS * DAY_MS
HOUR = NOW // HOUR_MS * HOUR_MS
MINUTE = NOW // MINUTE_MS * MINUTE_MS
DEFAULTS = Retention()


def iso(rng: TimeRange) -> tuple[str | None, str | None]:
    return rng.iso()


@pytest.mark.parametrize(("period", "expected"), [
    ("realtime", ("2026-11-28T10:13:00Z", "2026-11-28T10:18:00Z")),
    ("today", ("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z")),
    ("24h", ("2026-11-27T11:00:00Z", "2026-11-28T11:00:00Z")),
    ("7d", ("2026-11-22T00:00:00Z", "2026-11-29T00:00:00Z")),
    ("30d", ("2026-10-30T00:00:00Z", "2026-11-29T00:00:00Z")),
    ("month", ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")),
    ("all", (None, None)),
])
def test_each_period_covers_its_documented_range(period: str,
                                                 expected: tuple[str | None, str | None]
                                                 ) -> None:
    assert iso(period_range(period, NOW)) == expected


def test_december_month_ends_at_the_next_year() -> None:
    dec = datetime_to_ms(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert iso(period_range("month", dec)) == ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")


def test_no_range_parameters_means_all_time_by_default() -> None:
    assert parse_range({}, NOW) == ALL_TIME


def test_a_date_as_to_includes_that_whole_day() -> None:
    rng = parse_range({"from": "2026-11-27", "to": "2026-11-27"}, NOW)
    assert iso(rng) == ("2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z")


def test_date_times_are_rounded_outward_to_whole_minutes() -> None:
    rng = parse_range({"from": "2026-11-27T10:05:30Z", "to": "2026-11-27T11:00:01Z"}, NOW)
    assert iso(rng) == ("2026-11-27T10:05:00Z", "2026-11-27T11:01:00Z")


def test_offsets_are_converted_to_utc() -> None:
    rng = parse_range({"from": "2026-11-27T12:00:00+02:00", "to": "2026-11-27T13:00:00+02:00"},
                      NOW)
    assert iso(rng) == ("2026-11-27T10:00:00Z", "2026-11-27T11:00:00Z")


def test_from_without_to_runs_until_now() -> None:
    rng = parse_range({"from": "2026-11-28"}, NOW)
    assert iso(rng) == ("2026-11-28T00:00:00Z", "2026-11-28T10:18:00Z")


@pytest.mark.parametrize(("query", "name"), [
    ({"period": "week"}, "period"),
    ({"period": "7d", "from": "2026-11-01"}, "period"),
    ({"to": "2026-11-01"}, "from"),
    ({"from": "yesterday"}, "from"),
    ({"from": "2026-13-01"}, "from"),
    ({"from": "2026-11-01T25:00:00Z"}, "from"),
    ({"from": "2026-11-02", "to": "2026-11-01"}, "to"),
    ({"from": "2026-11-01", "to": "garbage"}, "to"),
    ({"from": "1900-01-01T00:00:00Z", "to": "2026-01-01"}, "from"),
    ({"from": "2000-01-01", "to": "2026-01-01"}, "to"),
    ({"from": "9999-12-30", "to": "9999-12-31"}, "from"),
    ({"from": "2026-01-01", "to": "9999-12-31T23:59:59Z"}, "to"),
    ({"from": "1969-12-31"}, "from"),
    ({"from": "0001-01-01T00:00:00+23:59"}, "from"),  # before year 1 in UTC: overflow
    ({"from": "2026-01-01", "to": "9999-12-31T23:59:59-23:59"}, "to"),  # past year 9999
])
def test_bad_ranges_name_the_parameter(query: dict[str, str], name: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_range(query, NOW)
    assert caught.value.name == name


def test_whole_days_are_read_as_day_buckets() -> None:
    assert tile(DAY - 2 * DAY_MS, DAY) == [Bucket("d", DAY // DAY_MS - 2),
                                          Bucket("d", DAY // DAY_MS - 1)]


def test_edges_use_hours_then_minutes_and_the_tiles_cover_the_range_exactly() -> None:
    start = DAY - DAY_MS - 2 * HOUR_MS - 3 * MINUTE_MS  # 21:57 two days back
    end = DAY + HOUR_MS + 5 * MINUTE_MS  # 01:05 today
    buckets = tile(start, end)
    assert [b.unit for b in buckets] == ["m"] * 3 + ["h"] * 2 + ["d"] + ["h"] + ["m"] * 5
    assert buckets[0].start_ms == start and buckets[-1].end_ms == end
    assert all(a.end_ms == b.start_ms for a, b in pairwise(buckets))


def test_a_range_inside_one_hour_uses_minutes_only() -> None:
    assert [b.unit for b in tile(HOUR, HOUR + 3 * MINUTE_MS)] == ["m", "m", "m"]


def test_unaligned_ranges_are_refused_by_the_tiler() -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        tile(NOW, NOW + MINUTE_MS)


def test_time_series_slots_are_aligned_and_clipped_to_the_range() -> None:
    rng = TimeRange(HOUR - 30 * MINUTE_MS, HOUR + HOUR_MS + 10 * MINUTE_MS)
    got = slots(rng, "hour")
    assert [(s.start_ms, s.end_ms) for s in got] == [
        (HOUR - 30 * MINUTE_MS, HOUR), (HOUR, HOUR + HOUR_MS),
        (HOUR + HOUR_MS, HOUR + HOUR_MS + 10 * MINUTE_MS)]
    assert slot_count(rng, "hour") == 3
    assert slot_count(period_range("7d", NOW), "minute") == 7 * 24 * 60


def test_minute_buckets_are_gone_48_hours_after_they_end_and_days_stay() -> None:
    minute = Bucket("m", MINUTE // MINUTE_MS - 47 * 60)
    assert retained(minute, NOW, DEFAULTS)
    assert not retained(Bucket("m", MINUTE // MINUTE_MS - 49 * 60), NOW, DEFAULTS)
    assert retained(Bucket("h", HOUR // HOUR_MS - 89 * 24), NOW, DEFAULTS)
    assert not retained(Bucket("h", HOUR // HOUR_MS - 91 * 24), NOW, DEFAULTS)
    assert retained(Bucket("d", 1), NOW, DEFAULTS)


def test_redis_answers_named_periods_and_minute_edges_inside_its_retention() -> None:
    assert redis_can_answer([period_range("24h", NOW), period_range("30d", NOW)], NOW, DEFAULTS)
    assert redis_can_answer([ALL_TIME], NOW, DEFAULTS)
    assert redis_can_answer([period_range("realtime", NOW)], NOW, DEFAULTS)
    assert redis_can_answer([TimeRange(DAY + 7 * MINUTE_MS, DAY + 3 * HOUR_MS)], NOW, DEFAULTS)


def test_ranges_past_minute_retention_need_mongo() -> None:
    old = TimeRange(DAY - 3 * DAY_MS + 5 * MINUTE_MS, DAY - 2 * DAY_MS)
    assert not redis_can_answer([old], NOW, DEFAULTS)
    assert redis_can_answer([TimeRange(DAY - 3 * DAY_MS, DAY - 2 * DAY_MS)], NOW, DEFAULTS)


def test_retention_settings_move_the_line_between_redis_and_mongo() -> None:
    """The aggregators expire buckets by REDIS_MINUTE_TTL_S / REDIS_HOUR_TTL_S; the query API
    must read the same settings, or it would read expired buckets as zero."""
    short = Retention(minute_ttl_s=3600, hour_ttl_s=7 * 24 * 3600)
    two_hours_ago = Bucket("m", MINUTE // MINUTE_MS - 2 * 60)
    assert retained(two_hours_ago, NOW, DEFAULTS)
    assert not retained(two_hours_ago, NOW, short)
    assert not retained(Bucket("h", HOUR // HOUR_MS - 8 * 24), NOW, short)
    since_two_hours_ago = TimeRange(HOUR - 2 * HOUR_MS + 5 * MINUTE_MS, MINUTE)
    assert redis_can_answer([since_two_hours_ago], NOW, DEFAULTS)
    assert not redis_can_answer([since_two_hours_ago], NOW, short)
