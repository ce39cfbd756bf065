"""Minute and hour buckets expire after the configured retention; day buckets never."""

from __future__ import annotations

import pytest

from aggregator.counting.aggregate import aggregate, to_ops
from contracts.aggregates import (
    ALL_TIME,
    BROWSER,
    DEVICE,
    DIMENSION_RANKINGS,
    DIMENSION_VISITORS,
    OS,
    PAGE_FACTS,
    SOURCE,
    VIEWS,
    VISITORS,
    Aggregate,
    Scope,
)
from contracts.event import PageView
from contracts.keys import SiteKeys
from contracts.page_facts import group_of
from contracts.settings import AggregatorSettings, QuerySettings, Retention, SettingsError

NOW = 1_795_860_000_000  # 2026-11-28T10:00:00Z, a whole hour


def test_the_retention_defaults_to_48_hours_and_90_days_and_comes_from_the_environment(
        ) -> None:
    assert AggregatorSettings.from_env({}).retention == Retention(48 * 3600, 90 * 86400)
    env = {"REDIS_MINUTE_TTL_S": "7200", "REDIS_HOUR_TTL_S": "86400"}
    assert AggregatorSettings.from_env(env).retention == Retention(7200, 86400)
    assert QuerySettings.from_env({**env, "STATS_AUTH_DISABLED": "true"}).retention == (
        Retention(7200, 86400))


@pytest.mark.parametrize(("env", "named"), [
    ({"REDIS_MINUTE_TTL_S": "soon"}, "REDIS_MINUTE_TTL_S"),
    ({"REDIS_MINUTE_TTL_S": "60"}, "REDIS_MINUTE_TTL_S"),  # shorter than "right now"
    ({"REDIS_MINUTE_TTL_S": "7200", "REDIS_HOUR_TTL_S": "3600"}, "REDIS_HOUR_TTL_S"),
])
def test_a_malformed_retention_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Retention.from_env(env)


def test_bucket_keys_expire_at_their_end_plus_the_configured_retention() -> None:
    retention = Retention(minute_ttl_s=7200, hour_ttl_s=86400)
    minute, hour = NOW // 60_000, NOW // 3_600_000
    site = SiteKeys("s")
    # A page view from /track counts in the page aggregates (in no breakdown), a tracker's
    # also in the dimensions: their keys expire alike.
    tracked = PageView("t", "s", "/p", "u", NOW, NOW, user_agent="Mozilla/5.0", via="umami")
    ops = to_ops(site, aggregate([PageView("e", "s", "/p", "u", NOW, NOW), tracked]),
                 retention)
    expiry = {ops.keys[int(str(op[1])) - 1]: op[2] for op in ops.ops}
    # The facts operation of each bucket sets its expiry on its hash, and on the bucket's
    # leaderboard, named pages counter and promoted HyperLogLogs (none here: 2 visitors).
    counted: list[tuple[Aggregate, str | None]] = [(VIEWS, None), (VISITORS, None),
                                                   (PAGE_FACTS, str(group_of("/p", None)))]
    counted += [(agg, ("(direct)" if d is SOURCE else "(unknown)") if agg.per_page else None)
                for d in (SOURCE, DEVICE, BROWSER, OS)
                for agg in (DIMENSION_RANKINGS[d], DIMENSION_VISITORS[d])]
    for agg, page in counted:
        def at(scope: Scope, agg: Aggregate = agg, page: str | None = page) -> object:
            member = str(group_of("/p", scope.unit)) if agg is PAGE_FACTS else page
            return expiry[site.key(agg, scope, member)]

        assert at(Scope("m", minute)) == NOW // 1000 + 60 + 7200
        assert at(Scope("h", hour)) == NOW // 1000 + 3600 + 86400
        assert at(Scope("d", NOW // 86_400_000)) == 0  # never
        assert at(ALL_TIME) == 0
    assert len(expiry) == 4 * len(counted)
