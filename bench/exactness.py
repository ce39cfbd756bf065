"""Exactly-once, as arithmetic: what a benchmark's own sites should hold, against what they hold.

Every benchmark that sends events knows, per site of its own, how many were acknowledged
(a 202 from the gateway, or an acknowledged produce for a pre-loaded topic) and how many are
*ambiguous*: sent but never answered (a request cut off when the load generator stopped, a
timeout, a dropped connection). An ambiguous event may or may not be in Kafka, so a site is
exact when each observed count (``/stats`` total views, each page's views where the bench
knows them, MongoDB's documents) lies within ``[acked, acked + ambiguous]``. Below is a
loss, above is a double count. With nothing ambiguous this is plain equality.

Pure: ``bench.exact_check`` does the waiting and the reading, this module only compares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Expected:
    """What one benchmark site should hold: events acknowledged and events ambiguous, in
    total and (when the bench knows its pages) per page."""

    site: str
    acked: int = 0
    ambiguous: int = 0
    pages: dict[str, int] = field(default_factory=dict)  # page -> acked (empty: unknown)
    pages_ambiguous: dict[str, int] = field(default_factory=dict)

    def add(self, acked: int, ambiguous: int = 0, pages: Mapping[str, int] | None = None,
            pages_ambiguous: Mapping[str, int] | None = None) -> None:
        self.acked += acked
        self.ambiguous += ambiguous
        for page, n in (pages or {}).items():
            self.pages[page] = self.pages.get(page, 0) + n
        for page, n in (pages_ambiguous or {}).items():
            self.pages_ambiguous[page] = self.pages_ambiguous.get(page, 0) + n


@dataclass(frozen=True)
class Observed:
    """What the stack holds for one site; None where it could not be read."""

    site: str
    stats_total: int | None
    stats_pages: dict[str, int] | None = None
    mongo_count: int | None = None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    sites: int
    acked: int
    ambiguous: int
    differences: tuple[str, ...]
    ambiguous_counted: int = 0  # /stats views above the acknowledged ones: ambiguous events

    def line(self) -> str:
        if self.ok:
            extra = (f", {self.ambiguous_counted:,} of {self.ambiguous:,} ambiguous counted"
                     if self.ambiguous else "")
            return (f"exactly-once: ok ({self.sites} sites, {self.acked:,} events "
                    f"acknowledged{extra})")
        shown = "; ".join(self.differences[:10])
        more = f" (+{len(self.differences) - 10} more)" if len(self.differences) > 10 else ""
        return f"exactly-once: FAILED: {shown}{more}"

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sites": self.sites, "acked": self.acked,
                "ambiguous": self.ambiguous, "ambiguous_counted": self.ambiguous_counted,
                "differences": list(self.differences)}


def within(value: int, acked: int, ambiguous: int) -> bool:
    return acked <= value <= acked + ambiguous


def _difference(what: str, value: int, acked: int, ambiguous: int) -> str | None:
    if within(value, acked, ambiguous):
        return None
    if value < acked:
        return f"{what}: {value:,} < {acked:,} acknowledged ({acked - value:,} lost)"
    return (f"{what}: {value:,} > {acked:,} acknowledged + {ambiguous:,} ambiguous "
            f"({value - acked - ambiguous:,} counted twice)")


def compare_site(expected: Expected, observed: Observed, check_mongo: bool = True
                 ) -> list[str]:
    """The differences for one site (empty: exact)."""
    site, acked, amb = expected.site, expected.acked, expected.ambiguous
    out: list[str] = []
    if observed.stats_total is None:
        out.append(f"{site} /stats: not read")
    elif (d := _difference(f"{site} /stats total", observed.stats_total, acked, amb)):
        out.append(d)
    if expected.pages:
        if observed.stats_pages is None:
            out.append(f"{site} /stats pages: not read")
        else:
            for page in sorted(set(expected.pages) | set(observed.stats_pages)):
                d = _difference(f"{site} page {page}", observed.stats_pages.get(page, 0),
                                expected.pages.get(page, 0),
                                expected.pages_ambiguous.get(page, 0))
                if d:
                    out.append(d)
    if check_mongo:
        if observed.mongo_count is None:
            out.append(f"{site} MongoDB: not read")
        elif (d := _difference(f"{site} MongoDB documents", observed.mongo_count, acked, amb)):
            out.append(d)
    return out


def compare(expected: Iterable[Expected], observed: Mapping[str, Observed],
            check_mongo: bool = True) -> Verdict:
    """Every site's counts within its bounds, or the differences."""
    differences: list[str] = []
    sites = acked = ambiguous = counted = 0
    for exp in expected:
        sites += 1
        acked += exp.acked
        ambiguous += exp.ambiguous
        obs = observed.get(exp.site)
        if obs is None:
            differences.append(f"{exp.site}: not read")
            continue
        differences += compare_site(exp, obs, check_mongo)
        counted += max(0, (obs.stats_total or 0) - exp.acked)
    return Verdict(not differences, sites, acked, ambiguous, tuple(differences), counted)
