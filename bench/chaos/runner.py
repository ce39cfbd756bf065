"""The chaos run, phase by phase: warm-up, then for each fault a steady baseline, the
injection, and the wait for recovery; then the load is drained and the final check runs.

Why one place: every fault is timed the same way. A phase tags the events first sent in it
(the load's pages name it), so the final check counts each phase on its own. Seconds to
recover run from the injection's start to the first check that finds everything right
(``watch.wait_recovered``); the phase then continues until the group's lag is back near its
baseline value (``timeline``), bounded by ``settle_timeout_s``, so the next fault starts
from a steady stack.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from admin.store import AdminStore
from bench.chaos.exact import ExactReport
from bench.chaos.faults import BY_NAME, NO_RETRY_EXPECTED, FaultContext
from bench.chaos.final_check import final_check
from bench.chaos.ledger import Ledger
from bench.chaos.load import ChaosLoad
from bench.chaos.settings import ChaosSettings
from bench.chaos.target import ChaosTarget
from bench.chaos.timeline import LagFigures, lag_figures, threshold
from bench.chaos.watch import LagSampler, wait_recovered
from contracts.mongo import DATABASE
from contracts.tenancy import Site

PROGRESS_S = 5.0
SITE_MAX_PAGES = 1000
SITE_MAX_EVENTS_PER_S = 100_000  # never the limit here: the load is a few hundred a second


@dataclass
class FaultResult:
    fault: str
    description: str
    inject_s: float = 0.0  # how long the injection (with its restore) took
    recovered_s: float | None = None
    problems: list[str] = field(default_factory=list)  # what was still wrong, if never
    lag: LagFigures | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "description": self.description,
                "inject_s": round(self.inject_s, 1),
                "recovered_s": None if self.recovered_s is None else round(self.recovered_s, 1),
                "problems": self.problems, "lag": self.lag.as_json() if self.lag else None,
                "notes": self.notes, "failures": self.failures}


@dataclass
class ChaosRun:
    settings: ChaosSettings
    sites: list[str]
    ledger: Ledger
    started_at: float = field(default_factory=time.time)
    faults: list[FaultResult] = field(default_factory=list)
    exact: ExactReport | None = None
    failures: list[str] = field(default_factory=list)


async def register_sites(target: ChaosTarget, sites: list[str]) -> None:
    """Register the chaos sites (what ``make sites ARGS="add …"`` does) and wait until every
    gateway serves them: a canary registered after them is accepted by each."""
    store = AdminStore.connect(target.env["MONGO_URL"], target.env.get("MONGO_DB", DATABASE))
    canary = f"chaos-canary-{uuid.uuid4().hex[:8]}"
    try:
        for site in sites:
            await store.add_site(Site(site, max_pages=SITE_MAX_PAGES,
                                      max_events_per_s=SITE_MAX_EVENTS_PER_S))
        await store.add_site(Site(canary))
    finally:
        await store.close()
    body = orjson.dumps({"page_id": "/canary", "user_id": "canary", "site_id": canary})
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for url in target.urls("GATEWAY_URLS"):
            while True:
                async with http.post(f"{url}/track", data=body,
                                     headers={"Content-Type": "application/json"}) as response:
                    if response.status == 202:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} does not serve new sites after 30 s")
                await asyncio.sleep(0.2)


class Runner:
    def __init__(self, target: ChaosTarget, settings: ChaosSettings,
                 say: Callable[[str, str], None]) -> None:
        self._target = target
        self._s = settings
        self._say = say
        self._rng = random.Random(settings.seed)
        self._errors_seen = 0

    async def run(self) -> ChaosRun:
        s, target = self._s, self._target
        run_id = uuid.uuid4().hex[:6]
        sites = [f"chaos-{run_id}-{chr(ord('a') + i)}" for i in range(s.sites)]
        run = ChaosRun(s, sites, Ledger())
        self._say("setup", f"registering sites {', '.join(sites)}")
        await register_sites(target, sites)
        load = ChaosLoad(target.http_url, sites, run.ledger, s.rate, seed=s.seed)
        lag = LagSampler(target)
        load.set_phase("warmup")
        await lag.start()
        await load.start()
        progress = asyncio.create_task(self._progress(load, lag, run.ledger))
        try:
            self._say("warmup", f"{s.rate:g} events/s for {s.seconds:g} s")
            await asyncio.sleep(s.seconds)  # a phase's length, not a wait for a condition
            for name in s.faults:
                run.faults.append(await self._fault(name, load, lag, run))
            self._say("drain", "load stopped; settling pending events")
            await load.drain(s.drain_timeout_s)
        finally:
            progress.cancel()
            await lag.stop()
        self._say("check", "final exact check")
        run.exact = await final_check(target, run.ledger, s.check_timeout_s,
                                      lambda text: self._say("check", text))
        return run

    async def _fault(self, name: str, load: ChaosLoad, lag: LagSampler,
                     run: ChaosRun) -> FaultResult:
        s, fault = self._s, BY_NAME[name]
        result = FaultResult(name, fault.description)
        load.set_phase(f"{name}.baseline")
        baseline_start = time.monotonic()
        self._say(name, f"baseline {s.seconds:g} s")
        await asyncio.sleep(s.seconds)  # a phase's length
        baseline = (baseline_start, time.monotonic())
        load.set_phase(name)
        acked_before = dict(run.ledger.acked_count_by_site())
        ctx = FaultContext(self._target, self._rng, s.outage_s,
                           lambda text: self._say(name, text), notes={"site": run.sites[0]})
        injected_at = time.monotonic()
        try:
            await fault.inject(ctx)
        except Exception as exc:
            ctx.failures.append(f"injection failed: {type(exc).__name__}: {exc}")
        result.inject_s = time.monotonic() - injected_at
        recovered, problems = await wait_recovered(self._target, acked_before, injected_at,
                                                   s.recovery_timeout_s)
        result.recovered_s, result.problems = recovered, list(problems)
        if recovered is None:
            ctx.failures.append(f"not recovered after {s.recovery_timeout_s:g} s: "
                                f"{'; '.join(problems[:5])}")
        self._say(name, f"recovered in {recovered:.1f} s" if recovered is not None
                  else f"NOT recovered: {'; '.join(problems[:3])}")
        await self._settle(lag, baseline)
        result.lag = lag_figures(lag.samples, baseline, injected_at, time.monotonic(), s.rate)
        ctx.notes.pop("site", None)
        result.notes, result.failures = ctx.notes, ctx.failures
        return result

    async def _settle(self, lag: LagSampler, baseline: tuple[float, float]) -> None:
        """Until the lag is back near its baseline value (bounded)."""
        base = sorted(v for t, v in lag.samples if baseline[0] <= t < baseline[1]
                      and v is not None)
        if not base:
            return
        limit = threshold(base[len(base) // 2], self._s.rate)
        deadline = time.monotonic() + self._s.settle_timeout_s
        while time.monotonic() < deadline:
            value = lag.latest()
            if value is not None and value <= limit:
                return
            await asyncio.sleep(0.5)

    async def _progress(self, load: ChaosLoad, lag: LagSampler, ledger: Ledger) -> None:
        last_acked, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_S)
            acked = sum(1 for r in ledger.events.values() if r.acked)
            now = time.monotonic()
            tallies = ledger.tallies.values()
            retries = sum(t.retries for t in tallies)
            errors = sum(sum(t.errors.values()) for t in tallies)
            self._say(load.phase, f"acked {acked:,} ({(acked - last_acked) / (now - last_t):,.0f}"
                                  f"/s)  sent {len(ledger.events):,}  in flight "
                                  f"{load.in_flight}  retries {retries:,}  errors {errors}  "
                                  f"lag {lag.latest()}")
            last_acked, last_t = acked, now


def verdicts(run: ChaosRun) -> list[str]:
    """Everything that makes the run fail (empty: passed)."""
    out = list(run.failures)
    summary = {p.phase: p for p in run.ledger.summary()}
    for result in run.faults:
        out += [f"{result.fault}: {f}" for f in result.failures]
        phase = summary.get(result.fault)
        if phase and result.fault in NO_RETRY_EXPECTED and phase.retries:
            out.append(f"{result.fault}: {phase.retries} requests had to be retried "
                       f"({phase.answers})")
    for phase in summary.values():
        if phase.errors:
            out.append(f"phase {phase.phase}: unexpected answers {phase.errors}")
    if run.exact is None:
        out.append("the final check did not run")
    else:
        out += run.exact.findings
    return out
