"""What the load generator sent, per event and per phase: the client's side of the truth.

Why its own module: the final check compares the stack with this record only, so it must say
exactly which events were acknowledged (a 202), which are ambiguous (sent, never answered
for good: they may or may not be in Kafka) and which were refused; and which phase each event
was first sent in, so a fault's phase is counted on its own. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(Enum):
    """What a well-behaved client does with one answer (``classify``)."""

    ACKED = "acked"  # 202: Kafka holds every event of the request
    RETRY = "retry"  # 429, 503, no answer: expected under faults; send the same body again
    RETRY_ERROR = "retry_error"  # another 5xx: retried too, but an error that fails the run
    REFUSED = "refused"  # another 4xx: the load is valid, so a failure of the run; final


NO_ANSWER = ("connection_error", "timeout")  # labels of attempts that got no status
# A request sent on a kept-alive connection the server closed meanwhile (an NGINX worker
# retiring at a reload closes its idle connections): no byte of an answer came back, so an
# HTTP client sends it again at once on a new connection (RFC 9112, 9.3.1; safe here since
# the body carries its event ids). Tallied, not counted as a retry.
STALE_CONNECTION = "stale_connection"


def classify(label: str) -> Outcome:
    """``label`` is the HTTP status as text, or one of ``NO_ANSWER``."""
    if label == "202":
        return Outcome.ACKED
    if label in NO_ANSWER or label in ("429", "503"):
        return Outcome.RETRY
    if label.startswith("5"):
        return Outcome.RETRY_ERROR
    return Outcome.REFUSED


def backoff_s(attempt: int, retry_after: str | None, cap_s: float, jitter: float) -> float:
    """The wait before retry number ``attempt`` (1 = first retry): the server's
    ``Retry-After`` when it sent one (capped), else 0.2 s doubling per attempt up to the cap;
    ``jitter`` in [0, 1) spreads clients that failed together."""
    if retry_after is not None:
        try:
            return min(cap_s, max(0.0, float(retry_after))) * (0.75 + 0.5 * jitter)
        except ValueError:
            pass
    return float(min(cap_s, 0.2 * 2.0 ** (attempt - 1)) * (0.5 + jitter))


@dataclass(slots=True)
class EventRecord:
    """One event as the client knows it. ``status`` is the final answer: "202" acknowledged,
    another status refused, None never answered for good (ambiguous)."""

    event_id: str
    site: str
    page: str
    user: str
    ts: int  # epoch ms, fixed at creation: a retry sends the same body
    phase: str
    retries: int = 0
    status: str | None = None

    @property
    def acked(self) -> bool:
        return self.status == "202"

    @property
    def ambiguous(self) -> bool:
        return self.status is None


@dataclass
class PhaseTally:
    """Request-level figures of one phase: requests first sent in it, and the answers (and
    retries they caused) that arrived in it."""

    requests: int = 0  # first sends
    retries: int = 0  # sends after the first, answered in this phase
    answers: Counter[str] = field(default_factory=Counter)  # every attempt's label
    errors: Counter[str] = field(default_factory=Counter)  # unexpected: 4xx refusals, 5xx not 503


@dataclass(frozen=True)
class PhaseSummary:
    phase: str
    sent: int
    acked: int
    ambiguous: int
    refused: int
    requests: int
    retries: int
    answers: dict[str, int]
    errors: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "sent": self.sent, "acked": self.acked,
                "ambiguous": self.ambiguous, "refused": self.refused,
                "requests": self.requests, "client_retries": self.retries,
                "answers": self.answers, "errors": self.errors}


class Ledger:
    """Every event sent, and per phase the requests' answers. The load generator writes it;
    the runner reads cut-offs from it; the final check compares the stack with it."""

    def __init__(self) -> None:
        self.events: dict[str, EventRecord] = {}
        self.phases: list[str] = []
        self.tallies: dict[str, PhaseTally] = {}

    def open_phase(self, phase: str) -> None:
        if phase in self.tallies:
            raise ValueError(f"phase {phase!r} opened twice")
        self.phases.append(phase)
        self.tallies[phase] = PhaseTally()

    def add(self, records: Iterable[EventRecord]) -> None:
        """New events about to be sent for the first time (one request)."""
        phase = None
        for record in records:
            if record.event_id in self.events:
                raise ValueError(f"event id {record.event_id} used twice")
            self.events[record.event_id] = record
            phase = record.phase
        if phase is not None:
            self.tallies[phase].requests += 1

    def reconnected(self, records: list[EventRecord], phase: str | None = None) -> None:
        """A send lost on a stale kept-alive connection (``STALE_CONNECTION``), about to be
        sent again at once on a new one."""
        self.tallies[phase or records[0].phase].answers[STALE_CONNECTION] += 1

    def answered(self, records: list[EventRecord], label: str, attempt: int,
                 phase: str | None = None) -> Outcome:
        """One attempt's answer for one request's events; returns what the client does
        next. ``attempt`` counts from 0 (the first send). The answer is tallied in ``phase``,
        the phase it arrived in (default: the one its events were first sent in), so a
        fault's answers show on its own row even for requests sent just before it."""
        outcome = classify(label)
        tally = self.tallies[phase or records[0].phase]
        tally.answers[label] += 1
        if attempt > 0:
            tally.retries += 1
        if outcome in (Outcome.RETRY_ERROR, Outcome.REFUSED):
            tally.errors[label] += 1
        for record in records:
            record.retries = attempt
            if outcome in (Outcome.ACKED, Outcome.REFUSED):
                record.status = label
        return outcome

    def of_phase(self, phase: str) -> Iterator[EventRecord]:
        return (r for r in self.events.values() if r.phase == phase)

    def acked_count_by_site(self) -> Counter[str]:
        """Events acknowledged so far, per site: what ``/stats`` must at least show."""
        return Counter(r.site for r in self.events.values() if r.acked)

    def summary(self) -> list[PhaseSummary]:
        sent: Counter[str] = Counter()
        acked: Counter[str] = Counter()
        ambiguous: Counter[str] = Counter()
        for r in self.events.values():
            sent[r.phase] += 1
            acked[r.phase] += r.acked
            ambiguous[r.phase] += r.ambiguous
        out = []
        for phase in self.phases:
            t = self.tallies[phase]
            out.append(PhaseSummary(
                phase, sent[phase], acked[phase], ambiguous[phase],
                sent[phase] - acked[phase] - ambiguous[phase], t.requests, t.retries,
                dict(sorted(t.answers.items())), dict(sorted(t.errors.items()))))
        return out
