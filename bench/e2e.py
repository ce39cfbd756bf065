"""bench-e2e: the highest sustained rate end to end, and freshness at half of it.

Each step sends a fixed rate of events open-loop for ``BENCH_SECONDS``: 100-event
``POST /events`` batches (fewer per batch below 2,000 events/s, so at least 20 requests a
second) to a site of the step's own, sent by vegeta (Go, ``bench.openloop.attack``) at fixed
times whatever the answers, from bodies built before the step (the gateway assigns ids and
times): a few hundred requests a second at 20,000 events/s, a small fraction of a core; its
CPU and how late it sent are recorded with each step (a Python sender shared one core with
the probes and polls). vegeta's per-request results give the 202s exactly. Meanwhile probe
events go to ``POST /track`` every 50 ms, each to its own page of a probe site, and a poller
asks ``/stats`` for that site back to back: freshness = first answer showing the page minus
the probe's 202 (it includes up to one poll round trip).

A step is **sustained** when at least 95% of the rate was accepted with no error, freshness
p99 is within the target (1 s), and every acknowledged event, probes and load alike, showed
in ``/stats``: the load site's total reached the events acknowledged within the target after
the last answer. The search (``bench.search``) doubles from ``BENCH_E2E_START_RATE`` until a
step is not sustained, then bisects ``BENCH_E2E_BISECT_STEPS`` times, within
``BENCH_E2E_BUDGET_S`` (default 30 x BENCH_SECONDS); then freshness is measured at half the
highest sustained rate. Issue 14's goals: >= 10,000 events/s sustained, p99 < 100 ms at half.
The run ends with the exactly-once check over every step's sites.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from bench import exact_check, openloop
from bench.cpu import CpuWindow, busiest, stack_groups
from bench.drain import wait_for_redis_answers, wait_for_stack
from bench.exactness import Expected
from bench.openloop import Hit
from bench.progress import say
from bench.results import Figure, Limit, Run
from bench.search import Tried, highest_sustained, next_rate
from bench.settings import BenchSettings
from bench.sites import register_sites
from bench.stats import Latency, rate

SUITE = "e2e"
FRESHNESS_SLO = "freshness-target"
FRESHNESS_GOAL = "freshness-goal"
RATE_GOAL = "e2e-rate-goal"
PROBE_INTERVAL_S = 0.05
PROBE_CONNECTIONS = 16
MAX_BATCH = 100
BODIES = 8  # distinct prebuilt bodies a step cycles through
LOAD_PAGES = 300
JSON = {"Content-Type": "application/json"}


@dataclass
class Step:
    target_rate: int
    load_site: str = ""
    probe_site: str = ""
    sent: int = 0
    accepted: int = 0
    errors: int = 0  # answered other than 202
    ambiguous: int = 0  # events of requests that got no answer (may be in Kafka)
    skipped: int = 0  # requests vegeta never sent within the step (it fell behind)
    seconds: float = 0.0
    polls: int = 0
    poll_errors: int = 0  # /stats answered other than 200 (e.g. Redis lost, MongoDB slow)
    generator_cpu_cores: float = 0.0  # vegeta's
    python_cpu_cores: float = 0.0  # this process's: probes, polls
    max_send_lag_ms: float = 0.0
    request_latency: Latency | None = None
    visible_after_s: float | None = None  # last load answer -> total reached accepted
    acked: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    probe_errors: int = 0  # probes that got no answer (may be in Kafka)
    probes_ambiguous: list[str] = field(default_factory=list)
    pages: Counter[str] = field(default_factory=Counter)  # load pages acknowledged
    pages_ambiguous: Counter[str] = field(default_factory=Counter)

    @property
    def achieved(self) -> float:
        return rate(self.accepted, self.seconds)

    def freshness_ms(self) -> list[float]:
        return [(self.seen[p] - t) * 1000 for p, t in self.acked.items() if p in self.seen]

    @property
    def missing(self) -> int:
        return len(self.acked) - len(self.seen)

    def sustained(self, slo_s: float) -> bool:
        return (self.achieved >= 0.95 * self.target_rate and self.errors == 0
                and self.ambiguous == 0 and self.missing == 0 and self.probe_errors == 0
                and self.visible_after_s is not None and self.visible_after_s <= slo_s
                and Latency.of(self.freshness_ms()).p99 <= slo_s * 1000)

    def expected(self) -> list[Expected]:
        load = Expected(self.load_site)
        load.add(self.accepted, self.ambiguous, self.pages, self.pages_ambiguous)
        probes = Expected(self.probe_site)
        probes.add(len(self.acked), self.probe_errors, dict.fromkeys(self.acked, 1),
                   dict.fromkeys(self.probes_ambiguous, 1))
        return [load, probes]


def batch_size(target_rate: int) -> int:
    """Events per request: 100, fewer below 2,000 events/s (at least 20 requests a second)."""
    return max(1, min(MAX_BATCH, target_rate // 20))


def bodies(site: str, batch: int) -> list[bytes]:
    """``BODIES`` request bodies of ``batch`` events each: every body has the same pages
    (``/load/0`` .. ``/load/{batch-1}``, once each; so each page's expected views are the
    requests accepted, whichever bodies they carried), the visitors differ."""
    return [orjson.dumps([{"page_id": f"/load/{i}", "user_id": f"u{(k * batch + i) % 20000}",
                           "site_id": site} for i in range(batch)])
            for k in range(BODIES)]


def load_targets(url: str, count: int) -> str:
    """vegeta's http targets for the prebuilt bodies ``body-0.json`` .. (taken in turn)."""
    return "".join(f"POST {url}\nContent-Type: application/json\n@body-{k}.json\n\n"
                   for k in range(count))


def tally(step: Step, hits: list[Hit], batch: int) -> None:
    """Events accepted (202), refused (another status: not in Kafka) and ambiguous (no
    answer: a timeout or a lost connection, maybe in Kafka) from vegeta's results."""
    accepted = sum(1 for h in hits if h.code == 202 and not h.error)
    unanswered = sum(1 for h in hits if h.code == 0)
    step.accepted += accepted * batch
    step.ambiguous += unanswered * batch
    step.errors += len(hits) - accepted - unanswered
    for i in range(batch):
        step.pages[f"/load/{i}"] += accepted
        if unanswered:
            step.pages_ambiguous[f"/load/{i}"] += unanswered


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _load(s: BenchSettings, step: Step, seconds: float) -> None:
    """The step's rate, open-loop, sent by vegeta (``bench.openloop.attack``): a request is
    sent at its time whatever the answers (up to 2,000 in flight; later ones are sent late,
    which ``max_send_lag_ms`` shows, or not at all: ``unsent``)."""
    batch = batch_size(step.target_rate)
    files = {f"body-{k}.json": body for k, body in enumerate(bodies(step.load_site, batch))}
    cpu0 = _cpu_s()
    started = time.monotonic()
    result, hits = await openloop.attack(load_targets(f"{s.http_url}/events", BODIES),
                                         step.target_rate / batch, seconds, 0.0, files)
    step.seconds = time.monotonic() - started
    tally(step, hits, batch)
    step.skipped = result.unsent
    step.seconds = seconds
    step.generator_cpu_cores = result.cpu_cores
    step.python_cpu_cores = (_cpu_s() - cpu0) / seconds if seconds else 0.0
    step.max_send_lag_ms = result.max_send_lag_ms
    step.request_latency = result.latency


async def _probes(http: aiohttp.ClientSession, s: BenchSettings, step: Step,
                  seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    i = 0
    while loop.time() < deadline:
        i += 1
        page = f"/probe/{i}"
        body = orjson.dumps({"page_id": page, "user_id": f"p{i}", "site_id": step.probe_site})
        try:
            async with http.post(f"{s.http_url}/track", data=body, headers=JSON) as response:
                await response.read()
                if response.status == 202:
                    step.acked[page] = time.monotonic()
                else:
                    step.errors += 1
        except (aiohttp.ClientError, TimeoutError):
            step.probe_errors += 1
            step.probes_ambiguous.append(page)
        await asyncio.sleep(PROBE_INTERVAL_S)


async def _poll(http: aiohttp.ClientSession, s: BenchSettings, step: Step,
                probes_done: asyncio.Event) -> None:
    """Until every probe is seen after the probes stopped, or cancelled."""
    url = f"{s.http_url}/stats?site_id={step.probe_site}&limit=10000"
    while True:
        try:
            async with http.get(url, headers=s.stats_headers()) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status, body = 0, b""
        now = time.monotonic()
        step.polls += 1
        if status != 200:
            step.poll_errors += 1
        else:
            for page in orjson.loads(body).get("pages", []):
                step.seen.setdefault(page["page_id"], now)
        if probes_done.is_set() and not step.missing:
            return
        await asyncio.sleep(0.01)


async def _load_visible(http: aiohttp.ClientSession, s: BenchSettings, step: Step,
                        timeout_s: float) -> None:
    """After the load's last answer: how long until its site's total reached what was
    acknowledged (None if not within ``timeout_s``)."""
    url = f"{s.http_url}/stats?site_id={step.load_site}&limit=1"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url, headers=s.stats_headers()) as response:
                if response.status == 200:
                    total = int((await response.json()).get("total_views", 0))
                    if total >= step.accepted:
                        step.visible_after_s = time.monotonic() - started
                        return
        await asyncio.sleep(0.01)


async def measure(s: BenchSettings, target_rate: int, tag: str) -> tuple[Step, dict[str, float]]:
    step = Step(target_rate, f"bench-e2e-{tag}-load-{target_rate}",
                f"bench-e2e-{tag}-fresh-{target_rate}")
    await register_sites(s, step.load_site, step.probe_site)
    window = CpuWindow(stack_groups())
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=PROBE_CONNECTIONS)
    settle_s = max(5.0, 5 * s.freshness_slo_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        probes_done = asyncio.Event()
        poller = asyncio.create_task(_poll(http, s, step, probes_done))
        window.start()
        await asyncio.gather(_load(s, step, s.seconds), _probes(http, s, step, s.seconds))
        cpu = window.stop()
        probes_done.set()
        await _load_visible(http, s, step, settle_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(poller), settle_s)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    return step, cpu


def _figure(name: str, step: Step, cpu: dict[str, float], limit: str, samples: bool,
            goal: dict[str, object] | None = None, slo_s: float = 1.0) -> Figure:
    fresh = step.freshness_ms()
    latency = Latency.of(fresh)
    extra: dict[str, object] = {
        "target_rate": step.target_rate, "achieved_rate": round(step.achieved, 1),
        "sustained": step.sustained(slo_s), "batch": batch_size(step.target_rate),
        "accepted": step.accepted, "ambiguous": step.ambiguous, "unsent_requests": step.skipped,
        "load_visible_after_s": None if step.visible_after_s is None
        else round(step.visible_after_s, 3),
        "probes": len(step.acked), "missing": step.missing, "polls": step.polls,
        "poll_errors": step.poll_errors,
        "poll_interval_ms": round(1000 * step.seconds / step.polls, 1) if step.polls else None,
        "generator": "vegeta", "generator_cpu_cores": round(step.generator_cpu_cores, 3),
        "python_cpu_cores": round(step.python_cpu_cores, 3),
        "max_send_lag_ms": round(step.max_send_lag_ms, 1),
        "request_latency": step.request_latency.as_dict() if step.request_latency else None,
        "sites": [step.load_site, step.probe_site], "cpu_cores": cpu, "busiest": busiest(cpu)}
    if goal:
        extra["goal"] = goal
    if samples:
        extra["freshness_ms"] = [round(x, 1) for x in sorted(fresh)]
    return Figure(SUITE, name, latency.p99, "ms p99", latency,
                  step.errors + step.missing + step.probe_errors, limit, extra)


def _say_step(step: Step, cpu: dict[str, float], slo_s: float) -> None:
    fresh = Latency.of(step.freshness_ms())
    visible = ("never" if step.visible_after_s is None
               else f"{step.visible_after_s * 1000:.0f} ms after the last answer")
    say(SUITE, f"  achieved {step.achieved:,.0f} events/s; freshness p50 {fresh.p50:.0f} ms, "
               f"p99 {fresh.p99:.0f} ms; load all visible {visible}; {step.missing} probes "
               f"missing, {step.errors} errors, {step.ambiguous} unanswered, {step.skipped} "
               f"unsent; vegeta {step.generator_cpu_cores:.2f} cores, sent up to "
               f"{step.max_send_lag_ms:.0f} ms late; probes+polls {step.python_cpu_cores:.2f} "
               f"cores; busiest: "
               f"{busiest(cpu)} -> {'sustained' if step.sustained(slo_s) else 'NOT sustained'}")


async def run_suite(s: BenchSettings, run: Run) -> None:
    slo = s.freshness_slo_s
    run.add_limit(Limit(FRESHNESS_SLO, slo * 1000, "ms",
                        "guarantee 3 of the design: an accepted event shows in /stats within "
                        "a second (p99); a target, not a machine limit"))
    run.add_limit(Limit(FRESHNESS_GOAL, s.freshness_goal_ms, "ms",
                        "issue 14: freshness p99 at half the highest sustained rate; a target"))
    run.add_limit(Limit(RATE_GOAL, s.e2e_rate_goal, "events/s",
                        "issue 14: the highest sustained rate end to end; a target"))
    if not await wait_for_redis_answers(s, SUITE):
        run.notes.append("e2e: the query API did not answer from Redis; freshness not measured")
        return
    await wait_for_stack(s, SUITE)
    tag = uuid.uuid4().hex[:8]
    expected: list[Expected] = []
    tried: list[Tried] = []
    steps: dict[int, tuple[Step, dict[str, float]]] = {}
    budget = s.e2e_budget()
    started = time.monotonic()
    step_cost = s.seconds + max(5.0, 5 * slo) + 2  # the load, settling, the next wait
    while (target := next_rate(tried, s.e2e_start_rate, s.e2e_max_rate,
                               s.e2e_bisect_steps)) is not None:
        spent = time.monotonic() - started
        if spent + 2 * step_cost > budget:  # keep one step's time for the half rate
            run.notes.append(f"e2e: the rate search stopped at its time budget ({budget:g}s, "
                             "BENCH_E2E_BUDGET_S) before trying "
                             f"{target:,} events/s")
            break
        phase = "doubling" if all(t.sustained for t in tried) else "bisecting"
        say(SUITE, f"search ({phase}, {spent:.0f}s of {budget:g}s): {target:,} events/s "
                   f"for {s.seconds:g}s")
        step, cpu = await measure(s, target, tag)
        expected += step.expected()
        steps[target] = (step, cpu)
        tried.append(Tried(target, step.sustained(slo)))
        _say_step(step, cpu, slo)
        label = "sustained" if step.sustained(slo) else "not sustained"
        run.add(_figure(f"freshness @ {target:,} ev/s ({label})", step, cpu, FRESHNESS_SLO,
                        False, slo_s=slo))
        await wait_for_stack(s, SUITE)
    best = highest_sustained(tried)
    run.add(Figure(SUITE, "highest sustained rate", steps[best][0].achieved if best else 0.0,
                   "events/s", limit=RATE_GOAL,
                   extra={"goal": {"min_ratio": 1.0,
                                   "text": f">= {s.e2e_rate_goal:,} events/s end to end"},
                          "target_rate": best, "tried": [[t.rate, t.sustained] for t in tried],
                          "criterion": "accepted >= 95% of the target, no errors, every "
                                       "probe and every acknowledged load event visible, "
                                       f"freshness p99 <= {slo * 1000:g} ms"}))
    if best:
        half = max(1, best // 2)
        say(SUITE, f"freshness at half the highest sustained rate: {half:,} events/s for "
                   f"{s.seconds:g}s")
        step, cpu = await measure(s, half, tag + "h")
        expected += step.expected()
        _say_step(step, cpu, slo)
        run.add(_figure(f"freshness @ {half:,} ev/s (half the highest sustained)", step, cpu,
                        FRESHNESS_GOAL, True,
                        {"max_ratio": 1.0, "text": f"p99 < {s.freshness_goal_ms:g} ms"}, slo))
    else:
        run.notes.append("e2e: no rate was sustained; freshness at half of it not measured")
    await wait_for_stack(s, SUITE)
    await exact_check.verify(s, run, SUITE, expected, s.mongo_db)
