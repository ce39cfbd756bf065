"""Exactly once, as arithmetic over the client's ledger and what the stores hold.

Why pure: this is the judgement of the whole run, so it is unit-tested on its own, and the
reading (``final_check``) cannot bend it. The rules:

- MongoDB holds every acknowledged event id of the chaos sites exactly once: a missing one is
  **lost**, one held twice (or under two ``_id`` forms) is **double-counted**; an id the
  client was refused (a final 4xx) or never sent must not be there at all.
- An *ambiguous* event (sent, never answered for good) may or may not be in Kafka; MongoDB,
  which keeps first occurrences only, says which ones got in. So the events that must be
  counted are the acknowledged ones plus the ambiguous ones MongoDB holds, and every Redis
  aggregate must equal their recount exactly: each site's all-time views, each page's views
  (the all-time ranking), each minute, hour and day bucket's views, and the unique visitors
  of the site and of each page (a HyperLogLog of the same ids built in Redis has the same
  registers, so the same count). Below the recount is lost, above is double-counted.
- Per phase (the events first sent in it, told apart by their pages): lost is the larger of
  the ids missing in MongoDB and the views missing in Redis; double-counted likewise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.ledger import EventRecord
from contracts.aggregates import scopes_of


@dataclass(frozen=True)
class RedisSite:
    """One site's aggregates in its current generation (None: not readable)."""

    views: int | None
    pages: Mapping[str, int]  # all-time ranking: page -> views
    buckets: Mapping[str, int]  # scope token (m…, h…, d…) -> views
    visitors: int | None  # PFCOUNT of the all-time visitors
    page_visitors: Mapping[str, int]  # page -> PFCOUNT of its all-time visitors


@dataclass(frozen=True)
class HllTruth:
    """PFCOUNTs of HyperLogLogs built from the ids that must be counted."""

    visitors: int
    page_visitors: Mapping[str, int]


@dataclass
class PhaseExact:
    acked: int = 0
    ambiguous: int = 0
    ambiguous_counted: int = 0  # ambiguous events MongoDB holds (so counted, rightly)
    missing_in_mongo: int = 0
    extra_in_mongo: int = 0  # held twice, or refused yet stored
    redis_views: int = 0
    redis_expected: int = 0

    @property
    def lost(self) -> int:
        return max(self.missing_in_mongo, self.redis_expected - self.redis_views, 0)

    @property
    def double(self) -> int:
        return max(self.extra_in_mongo, self.redis_views - self.redis_expected, 0)

    def as_json(self) -> dict[str, Any]:
        return {"acked": self.acked, "ambiguous": self.ambiguous,
                "ambiguous_counted": self.ambiguous_counted, "counted": self.redis_views,
                "lost": self.lost, "double_counted": self.double,
                "missing_in_mongo": self.missing_in_mongo, "extra_in_mongo": self.extra_in_mongo}


@dataclass
class ExactReport:
    phases: dict[str, PhaseExact] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)  # what was compared, counted

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.phases.values())

    @property
    def double(self) -> int:
        return sum(p.double for p in self.phases.values())

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "lost": self.lost, "double_counted": self.double,
                "checked": dict(self.checked), "findings": self.findings,
                "phases": {k: v.as_json() for k, v in self.phases.items()}}


def to_count(events: Iterable[EventRecord], mongo: Mapping[str, Counter[str]]
             ) -> list[EventRecord]:
    """The events the aggregates must hold: acknowledged, and ambiguous ones MongoDB has."""
    return [r for r in events
            if r.acked or (r.ambiguous and mongo.get(r.site, Counter())[r.event_id] > 0)]


def _diff(findings: list[str], what: str, observed: int | None, expected: int) -> None:
    if observed is None:
        findings.append(f"{what}: not read")
    elif observed < expected:
        findings.append(f"{what}: {observed:,} < {expected:,} ({expected - observed:,} lost)")
    elif observed > expected:
        findings.append(f"{what}: {observed:,} > {expected:,} "
                        f"({observed - expected:,} double-counted)")


def check(events: Iterable[EventRecord], mongo: Mapping[str, Counter[str]],
          redis: Mapping[str, RedisSite], hll: Mapping[str, HllTruth],
          phases: Iterable[str]) -> ExactReport:
    """Compare; ``mongo`` is per site the event ids of its stored documents with how many
    documents hold each."""
    events = list(events)
    report = ExactReport(phases={p: PhaseExact() for p in phases})
    findings = report.findings
    sent = {(r.site, r.event_id) for r in events}
    for r in events:
        phase = report.phases.setdefault(r.phase, PhaseExact())
        held = mongo.get(r.site, Counter())[r.event_id]
        phase.acked += r.acked
        phase.ambiguous += r.ambiguous
        if r.acked and held == 0:
            phase.missing_in_mongo += 1
        if r.ambiguous and held:
            phase.ambiguous_counted += 1
        allowed = 0 if not (r.acked or r.ambiguous) else 1
        if held > allowed:
            phase.extra_in_mongo += held - allowed
    for p, phase in report.phases.items():
        if phase.missing_in_mongo:
            findings.append(f"MongoDB, phase {p}: {phase.missing_in_mongo:,} acknowledged "
                            "events missing (lost)")
        if phase.extra_in_mongo:
            findings.append(f"MongoDB, phase {p}: {phase.extra_in_mongo:,} documents too many "
                            "(double-counted or refused events stored)")
    for site, ids in sorted(mongo.items()):
        unknown = sum(1 for event_id in ids if (site, event_id) not in sent)
        if unknown:
            findings.append(f"MongoDB {site}: {unknown:,} event ids the load never sent")
    report.checked["mongo_ids"] = sum(len(ids) for ids in mongo.values())

    counted = to_count(events, mongo)
    by_site: dict[str, list[EventRecord]] = defaultdict(list)
    for r in counted:
        by_site[r.site].append(r)
    phase_of_page = {r.page: r.phase for r in events}
    for site in sorted({r.site for r in events}):
        mine = by_site.get(site, [])
        obs = redis.get(site)
        if obs is None:
            findings.append(f"Redis {site}: not read")
            continue
        _diff(findings, f"Redis {site} all-time views", obs.views, len(mine))
        pages = Counter(r.page for r in mine)
        for page in sorted(set(pages) | set(obs.pages)):
            _diff(findings, f"Redis {site} views of {page}", obs.pages.get(page, 0), pages[page])
            of_page = report.phases.get(phase_of_page.get(page, ""))
            if of_page is not None:
                of_page.redis_views += obs.pages.get(page, 0)
                of_page.redis_expected += pages[page]
            elif obs.pages.get(page, 0):
                findings.append(f"Redis {site}: views of a page the load never sent: {page}")
        buckets = Counter(s.token for r in mine for s in scopes_of(r.ts) if s.unit is not None)
        for token in sorted(buckets):
            _diff(findings, f"Redis {site} views of bucket {token}", obs.buckets.get(token),
                  buckets[token])
        truth = hll.get(site)
        if truth is None:
            findings.append(f"Redis {site}: visitors not compared")
        else:
            _diff(findings, f"Redis {site} unique visitors", obs.visitors, truth.visitors)
            for page, n in sorted(truth.page_visitors.items()):
                _diff(findings, f"Redis {site} unique visitors of {page}",
                      obs.page_visitors.get(page), n)
        report.checked["sites"] += 1
        report.checked["pages"] += len(pages)
        report.checked["buckets"] += len(buckets)
        report.checked["events_counted"] += len(mine)
    return report
