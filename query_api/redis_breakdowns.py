"""What the Redis reader reads for a breakdown: each bucket's version, and its ranking whole.

Why versions: the reader caches a dimension's merged ranking and its values' visitor counts
as it caches the pages' (``versioned_cache``), valid while the buckets they came from are
unchanged. A bucket's version is what every event adding to its breakdown also moves, in the
same atomic step (``aggregator.counting.redis_sink``):

- a page-view dimension (source, UTM, device, browser, OS): the site's views in the bucket.
  Every page view it counts is a view; the views of ``/track`` and ``/events`` (in no
  breakdown) only make the cache read the bucket again, which is cheap.
- ``event``: named events are not views, so the version is the event ranking's own total,
  summed by the read script. Its quota bounds it (``Dimension.max_values`` plus ``(other)``
  per bucket), so that sum stays a short loop.

A bucket's ranking is read whole in one call with its version (its quota bounds it too):
nothing can tear it. Pure planning and reply parsing; the reader runs the batches.
"""

from __future__ import annotations

from typing import Any

from contracts.aggregates import (
    DIMENSION_RANKINGS,
    EVENT,
    FILTERED,
    VIEWS,
    Aggregate,
    Dimension,
    Scope,
)
from contracts.keys import SiteKeys
from query_api.redis_reads import Batch, Packer

TOTALS_PER_CALL = 16  # event rankings summed by one call: at most ~3,200 members


def plan_versions(keys: SiteKeys, scopes: list[Scope], dimension: Dimension) -> list[Batch]:
    """Batches whose replies, in order, hold the version of each scope (``versions_of``)."""
    packer = Packer()
    if dimension == EVENT:
        ranking = DIMENSION_RANKINGS[dimension]
        for start in range(0, len(scopes), TOTALS_PER_CALL):
            chunk = scopes[start:start + TOTALS_PER_CALL]
            packer.batch_for(TOTALS_PER_CALL).add("total", [keys.key(ranking, s) for s in chunk])
    else:
        _add_gets(packer, keys, VIEWS, scopes)
    return packer.batches


def versions_of(replies: list[list[Any]]) -> tuple[int, ...]:
    return tuple(int(v) for reply in replies for read in reply for v in read)


def plan_bucket(keys: SiteKeys, scope: Scope, dimension: Dimension) -> Batch:
    """One call reading a bucket's ranking whole and its version (``bucket_of``)."""
    batch = Batch()
    ranking = keys.key(DIMENSION_RANKINGS[dimension], scope)
    batch.add_range(ranking, 0, -1)
    if dimension == EVENT:
        batch.add("total", [ranking])
    else:
        batch.add("get", [keys.key(VIEWS, scope)])
    return batch


def bucket_of(reply: list[Any]) -> tuple[int, dict[str, int]]:
    """(version, value -> count) from the reply to ``plan_bucket``. Values named by a
    refused quota step but not counted yet (count 0) are left out."""
    flat, (version,) = reply
    counts: dict[str, int] = {}
    for i in range(0, len(flat), 2):
        n = -int(flat[i + 1])
        if n > 0:
            counts[flat[i].decode()] = n
    return int(version), counts


def plan_filtered(keys: SiteKeys, scopes: list[Scope]) -> list[Batch]:
    """Batches reading the bot counters of the range (their replies summed: ``total_of``)."""
    packer = Packer()
    _add_gets(packer, keys, FILTERED, scopes)
    return packer.batches


def _add_gets(packer: Packer, keys: SiteKeys, counter: Aggregate, scopes: list[Scope]) -> None:
    """GET the counter of every scope, 200 keys a call."""
    for start in range(0, len(scopes), 200):
        chunk = scopes[start:start + 200]
        packer.batch_for(len(chunk)).add("get", [keys.key(counter, s) for s in chunk])


def total_of(replies: list[list[Any]]) -> int:
    return sum(int(n) for reply in replies for counts in reply for n in counts)
