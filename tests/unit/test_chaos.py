"""The pure parts of ``make chaos``: the client's ledger and retry policy, the exactness
arithmetic, the lag figures, and the table."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bench.chaos.exact import HllTruth, RedisSite, check, to_count
from bench.chaos.ledger import EventRecord, Ledger, Outcome, backoff_s, classify
from bench.chaos.load import ChaosLoad
from bench.chaos.report import rows
from bench.chaos.settings import ChaosSettingsError, parse_faults
from bench.chaos.timeline import lag_figures
from contracts.aggregates import scopes_of

TS = 1_764_700_000_000  # a fixed event time


def event(n: int, phase: str = "p1", status: str | None = "202", site: str = "s",
          page: str | None = None, user: str | None = None) -> EventRecord:
    return EventRecord(f"e{n}", site, page or f"/{phase}/a", user or f"u{n % 3}", TS, phase,
                       status=status)


def redis_for(events: list[EventRecord]) -> tuple[dict[str, RedisSite], dict[str, HllTruth]]:
    """What a correct Redis holds for ``events`` (all of site ``s``), and its HLL truth."""
    pages = Counter(r.page for r in events)
    buckets = Counter(s.token for r in events for s in scopes_of(r.ts) if s.unit)
    users = {r.user for r in events}
    page_users = {p: len({r.user for r in events if r.page == p}) for p in pages}
    return ({"s": RedisSite(len(events), dict(pages), dict(buckets), len(users), page_users)},
            {"s": HllTruth(len(users), page_users)})


def mongo_of(events: list[EventRecord]) -> dict[str, Counter[str]]:
    return {"s": Counter(r.event_id for r in events)}


# ------------------------------------------------------------------ ledger and retries

@pytest.mark.parametrize(("label", "outcome"), [
    ("202", Outcome.ACKED), ("503", Outcome.RETRY), ("429", Outcome.RETRY),
    ("connection_error", Outcome.RETRY), ("timeout", Outcome.RETRY),
    ("500", Outcome.RETRY_ERROR), ("502", Outcome.RETRY_ERROR), ("504", Outcome.RETRY_ERROR),
    ("400", Outcome.REFUSED), ("403", Outcome.REFUSED)])
def test_each_answer_has_one_client_reaction(label: str, outcome: Outcome) -> None:
    assert classify(label) is outcome


def test_retry_after_is_honoured_but_capped_and_the_backoff_doubles_to_the_cap() -> None:
    assert backoff_s(1, "2", cap_s=5, jitter=0.5) == 2.0
    assert backoff_s(1, "120", cap_s=5, jitter=0.5) == 5.0
    assert [backoff_s(a, None, cap_s=1, jitter=0.5) for a in (1, 2, 3, 4, 5)] == \
        [0.2, 0.4, 0.8, 1.0, 1.0]


def test_the_ledger_counts_per_phase_what_was_sent_acknowledged_retried_and_refused() -> None:
    ledger = Ledger()
    ledger.open_phase("warmup")
    a, b = event(1, "warmup", None), event(2, "warmup", None)
    c = event(3, "warmup", None)
    ledger.add([a, b])
    ledger.add([c])
    assert ledger.answered([a, b], "503", 0) is Outcome.RETRY
    assert ledger.answered([a, b], "202", 1) is Outcome.ACKED
    assert ledger.answered([c], "500", 0) is Outcome.RETRY_ERROR
    [summary] = ledger.summary()
    assert (summary.sent, summary.acked, summary.ambiguous, summary.refused) == (3, 2, 1, 0)
    assert (summary.requests, summary.retries) == (2, 1)
    assert summary.answers == {"202": 1, "500": 1, "503": 1}
    assert summary.errors == {"500": 1}
    assert a.retries == 1 and ledger.acked_count_by_site() == {"s": 2}


def test_an_event_id_is_never_sent_as_two_events() -> None:
    ledger = Ledger()
    ledger.open_phase("p1")
    ledger.add([event(1)])
    with pytest.raises(ValueError, match="used twice"):
        ledger.add([event(1)])


# ------------------------------------------------------------------ exactness

def test_a_store_holding_exactly_the_acknowledged_events_passes() -> None:
    events = [event(n) for n in range(10)]
    redis, hll = redis_for(events)
    report = check(events, mongo_of(events), redis, hll, ["p1"])
    assert report.ok, report.findings
    assert (report.lost, report.double) == (0, 0)
    assert report.phases["p1"].redis_views == 10


def test_an_acknowledged_id_missing_from_mongodb_is_lost_in_its_phase() -> None:
    events = [event(n) for n in range(10)]
    redis, hll = redis_for(events)
    mongo = mongo_of(events[1:])
    report = check(events, mongo, redis, hll, ["p1"])
    assert report.phases["p1"].lost == 1
    assert "MongoDB, phase p1: 1 acknowledged events missing (lost)" in report.findings


def test_a_view_applied_twice_in_redis_is_double_counted_in_total_page_and_bucket() -> None:
    events = [event(n) for n in range(10)]
    redis, hll = redis_for(events)
    site = redis["s"]
    minute = next(t for t in site.buckets if t.startswith("m"))
    redis["s"] = RedisSite(11, {"/p1/a": 11}, {**site.buckets, minute: 11}, site.visitors,
                           site.page_visitors)
    report = check(events, mongo_of(events), redis, hll, ["p1"])
    assert report.phases["p1"].double == 1 and report.double == 1
    assert "Redis s all-time views: 11 > 10 (1 double-counted)" in report.findings
    assert f"Redis s views of bucket {minute}: 11 > 10 (1 double-counted)" in report.findings


def test_ambiguous_events_count_exactly_when_mongodb_holds_them_and_not_otherwise() -> None:
    acked = [event(n) for n in range(5)]
    stored, unstored = event(5, status=None), event(6, status=None)
    everything = [*acked, stored, unstored]
    mongo = mongo_of([*acked, stored])
    assert to_count(everything, mongo) == [*acked, stored]
    redis, hll = redis_for([*acked, stored])
    report = check(everything, mongo, redis, hll, ["p1"])
    assert report.ok, report.findings
    assert report.phases["p1"].ambiguous_counted == 1
    redis_short, _ = redis_for(acked)  # the stored ambiguous event not counted: a loss
    assert not check(everything, mongo, redis_short, hll, ["p1"]).ok


def test_a_refused_event_stored_and_an_id_never_sent_are_both_reported() -> None:
    events = [event(1), event(2, status="400")]
    redis, hll = redis_for(events[:1])
    mongo = {"s": Counter({"e1": 1, "e2": 1, "stranger": 1})}
    report = check(events, mongo, redis, hll, ["p1"])
    assert report.phases["p1"].double == 1
    assert "MongoDB s: 1 event ids the load never sent" in report.findings


def test_a_visitor_count_below_the_hyperloglog_of_the_same_ids_is_a_loss() -> None:
    events = [event(n) for n in range(6)]
    redis, hll = redis_for(events)
    site = redis["s"]
    redis["s"] = RedisSite(site.views, site.pages, site.buckets, 2, site.page_visitors)
    report = check(events, mongo_of(events), redis, hll, ["p1"])
    assert report.findings == ["Redis s unique visitors: 2 < 3 (1 lost)"]


def test_each_phase_is_counted_by_its_own_pages() -> None:
    events = [event(1, "a"), event(2, "a"), event(3, "b")]
    redis, hll = redis_for(events)
    report = check(events, mongo_of(events), redis, hll, ["a", "b"])
    assert report.phases["a"].redis_views == 2 and report.phases["b"].redis_views == 1


# ------------------------------------------------------------------ lag and settings

def test_lag_figures_take_the_baseline_median_the_peak_and_the_return_after_it() -> None:
    samples = [(0.0, 10), (1.0, 12), (2.0, 11), (3.0, None), (4.0, 900), (5.0, 400),
               (6.0, 200), (7.0, 12)]
    figures = lag_figures(samples, (0.0, 3.0), 3.0, 7.0, rate=100)
    assert (figures.steady, figures.peak, figures.unreadable) == (11, 900, 1)
    assert figures.settled_s == 4.0  # at 7.0 the lag is back under 11 + 100


def test_a_lag_that_never_left_its_steady_band_settles_at_once() -> None:
    figures = lag_figures([(0.0, 5), (1.0, 6), (2.0, 50)], (0.0, 2.0), 2.0, 3.0, rate=100)
    assert figures.settled_s == 0.0


def test_faults_are_chosen_by_name_in_catalogue_order_and_the_cluster_fault_needs_3() -> None:
    assert parse_faults("gateway_kill,redis_flush", 1) == ("redis_flush", "gateway_kill")
    assert "broker_leader_loss" not in parse_faults("", 1)
    assert "broker_leader_loss" in parse_faults("", 3)
    with pytest.raises(ChaosSettingsError, match="unknown"):
        parse_faults("gateway_kil", 1)


def test_the_table_has_a_row_per_phase_with_the_fault_figures_on_the_fault_row() -> None:
    data = {
        "phases": [{"phase": "gateway_kill.baseline", "sent": 10, "acked": 10, "ambiguous": 0,
                    "client_retries": 0, "answers": {"202": 4}, "errors": {}},
                   {"phase": "gateway_kill", "sent": 20, "acked": 20, "ambiguous": 0,
                    "client_retries": 3, "answers": {"202": 8, "503": 3}, "errors": {}}],
        "faults": [{"fault": "gateway_kill", "recovered_s": 4.25,
                    "lag": {"steady": 12, "peak": 300, "settled_s": 6.0}}],
        "exact": {"phases": {"gateway_kill": {"counted": 20, "lost": 0, "double_counted": 0}}},
    }
    base, fault = rows(data)
    assert base[0] == "gateway_kill.baseline" and base[-3:] == ("", "12/-", "")
    assert fault == ("gateway_kill", "20", "20", "20", "0", "0", "0", "3", "503: 3", "0",
                     "4.2", "12/300", "6.0")


def test_an_answer_is_tallied_in_the_phase_it_arrived_in() -> None:
    ledger = Ledger()
    ledger.open_phase("baseline")
    ledger.open_phase("fault")
    sent_before = event(1, "baseline", None)
    ledger.add([sent_before])
    ledger.answered([sent_before], "503", 0, phase="fault")
    ledger.answered([sent_before], "202", 1, phase="fault")
    base, fault = ledger.summary()
    assert (base.sent, base.acked, base.answers) == (1, 1, {})
    assert (fault.sent, fault.retries, fault.answers) == (0, 1, {"202": 1, "503": 1})


# ------------------------------------------------------------------ stale keep-alive

class ClosingServer:
    """A raw HTTP/1.1 server on loopback: answers 202 and keeps the connection alive, but
    closes a kept-alive connection when its second request arrives, before answering (what an
    NGINX worker retiring at a reload does to a request racing its close)."""

    def __init__(self, close_fresh_too: bool = False) -> None:
        self.requests = 0
        self._close_fresh = close_fresh_too

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            self.requests += 1
            if served == 1 or self._close_fresh:
                self._close_fresh = False
                writer.close()
                return
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            served += 1


async def send_twice(server: ClosingServer) -> Ledger:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    ledger = Ledger()
    load = ChaosLoad(f"http://127.0.0.1:{port}", ["s"], ledger, rate=1.0, seed=1)
    load.set_phase("reload")
    load.open()
    try:
        for n in (1, 2):
            records = [event(n, "reload", None)]
            ledger.add(records)
            await load.send(records, "/track")
    finally:
        await load.drain(0)
        listener.close()
    return ledger


async def test_a_send_lost_on_a_stale_kept_alive_connection_goes_again_at_once() -> None:
    server = ClosingServer()
    ledger = await send_twice(server)
    [phase] = ledger.summary()
    assert server.requests == 3  # the second send was resent on a new connection
    assert (phase.acked, phase.retries, phase.answers) == (2, 0, {
        "202": 2, "stale_connection": 1})


async def test_a_fresh_connection_closed_without_an_answer_is_a_retried_connection_error() -> None:
    ledger = await send_twice(ClosingServer(close_fresh_too=True))
    [phase] = ledger.summary()
    assert phase.acked == 2 and phase.retries >= 1
    assert phase.answers["connection_error"] == 1
