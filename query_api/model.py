"""What a stats reader answers, and the interface both readers (Redis, MongoDB) implement.

Why one small interface: the handlers compose every endpoint from these few questions, so
the Redis reader and the MongoDB fallback give the same answers by construction, and the
choice between them (``query_api.service``) is made in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from contracts.aggregates import Dimension
from query_api.ranges import TimeRange


class RangeTooCostly(ValueError):
    """Answering would read more than a request may (a reader's bound, e.g. the entries
    of many bucket rankings): the handler answers 400 with this text."""


@dataclass(frozen=True, slots=True)
class Totals:
    views: int
    unique_visitors: int


@dataclass(frozen=True, slots=True)
class PageStat:
    page_id: str
    views: int
    unique_visitors: int


class StatsReader(Protocol):
    """Called by the handlers (through ``StatsService``); every method does network I/O and
    raises the store's errors when it is down."""

    source: str

    async def ping(self) -> bool:
        """Whether the store answers (for ``/readyz``)."""
        ...

    async def complete(self) -> bool:
        """Whether the store holds every count (Redis does not after it lost its state,
        until a rebuild completes)."""
        ...

    async def totals(self, site_id: str, rng: TimeRange, page_id: str | None) -> Totals:
        """Views and unique visitors of the site (or of one page) over the range."""
        ...

    async def ranked_pages(self, site_id: str, rng: TimeRange, offset: int, limit: int
                           ) -> tuple[int, list[tuple[str, int]]]:
        """How many pages have views in the range, and ``limit`` of them after ``offset``
        as (page, views), by views descending, then page id ascending."""
        ...

    async def page_uniques(self, site_id: str, rng: TimeRange, pages: list[str]
                           ) -> dict[str, int]:
        """Unique visitors of each given page over the range."""
        ...

    async def series(self, site_id: str, slots: list[TimeRange], interval: str,
                     page_id: str | None) -> list[Totals]:
        """Views and unique visitors per slot (the interval's buckets, clipped to the range),
        in the order of ``slots``."""
        ...

    async def breakdown(self, site_id: str, rng: TimeRange, dimension: Dimension,
                        offset: int, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
        """How many values the dimension has over the range, and ``limit`` of them after
        ``offset`` as (value, views, unique visitors), views descending then value
        ascending (for ``event``: events per name)."""
        ...

    async def filtered(self, site_id: str, rng: TimeRange) -> int:
        """Bot requests acknowledged but not counted, over the range."""
        ...
