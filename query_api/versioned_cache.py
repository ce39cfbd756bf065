"""Exact caches for the query API's costly reads, kept valid by the buckets' view counters.

Why exact: every event adds, in one atomic step, to a bucket's view counter, its ranking
and its HyperLogLogs (``contracts.aggregates``). Counts only grow within a generation (and a
bucket that expires reads 0), so while the views a bucket holds are unchanged, so are its
ranking and its visitors. A cached value is therefore used only with the very view counts it
was computed from (its *version*), read in the same round trip as everything else: never
stale, only cheaper. Both caches are bounded and forget the least recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")
Version = tuple[int, ...]


class VersionedCache(Generic[V]):
    """key -> (version, value); a value is returned only for the same version."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[Hashable, tuple[Version, V]] = OrderedDict()

    def get(self, key: Hashable, version: Version) -> V | None:
        found = self._items.get(key)
        if found is None or found[0] != version:
            return None
        self._items.move_to_end(key)
        return found[1]

    def known(self, key: Hashable) -> bool:
        """Whether some version is held (a hint that it may still be current)."""
        return key in self._items

    def put(self, key: Hashable, version: Version, value: V) -> None:
        self._items[key] = (version, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


@dataclass
class MergedRanking:
    """Page views summed over several buckets, with each bucket's share and version, so a
    changed bucket is swapped in without summing the others again."""

    buckets: dict[Hashable, tuple[int, dict[str, int]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _ranked: list[tuple[str, int]] | None = None

    def swap(self, bucket: Hashable, version: int, pages: dict[str, int]) -> None:
        _, old = self.buckets.get(bucket, (0, {}))
        counts = self.counts
        for page, n in old.items():
            if pages.get(page) != n:
                left = counts[page] - n
                if left:
                    counts[page] = left
                else:
                    del counts[page]
        for page, n in pages.items():
            before = old.get(page)
            if before != n:
                counts[page] = counts.get(page, 0) + n
        self.buckets[bucket] = (version, pages)
        self._ranked = None

    def ranked(self) -> list[tuple[str, int]]:
        """Views descending, then page id ascending (as Python orders UTF-8 text: by code
        point, which is Redis's byte order)."""
        if self._ranked is None:
            self._ranked = sorted(self.counts.items(), key=lambda pv: (-pv[1], pv[0]))
        return self._ranked

    @property
    def size(self) -> int:
        return sum(len(pages) for _, pages in self.buckets.values())
