"""The data bench-query reads: one large site with 30 days of history, and many small sites.

Why straight into Kafka: the gateway refuses events older than its late window (7 days),
and a month of history is what makes day, hour and minute buckets all matter. The events
are encoded with the contracts codec and keyed like the gateway's records, so the stack's
own aggregators count them exactly as they count live traffic.

Why fixed ids and a fixed anchor: every event id is derived from its site and index (the
site in it too: the stack's MongoDB sink keys raw events by event id alone, so ids that were
unique only per site would suppress each other across sites), and the time
the history ends (the anchor) is kept in ``.run/bench-seed.json`` with the spec, so a
re-run that finds the data incomplete re-sends the same events with the same ids and
times, and the pipeline's de-duplication makes the second copy count nothing. A run that
finds the counts complete skips seeding. Generation is pure and seeded (tested); only
``ensure_seeded`` does I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bench.events import as_tracker_view
from bench.kafka import GroupLag, produce
from bench.progress import say
from bench.settings import ROOT, BenchSettings, BenchSettingsError
from bench.sites import register_sites
from contracts.event import PageView
from contracts.timebuckets import DAY_MS, HOUR_MS, iso_z

SUITE = "seed"
MARKER = ROOT / ".run" / "bench-seed.json"
ZIPF_EXPONENT = 1.0


@dataclass(frozen=True)
class SeedSpec:
    """How much data: the issue's size by default; ``BENCH_SEED_*`` shrink it for a quick
    run (a different size is a different site, so sizes never mix)."""

    pages: int = 10_000
    visitors: int = 200_000
    days: int = 30
    events: int = 1_000_000  # on the large site, spread over ``days``
    small_sites: int = 1_000
    small_events: int = 20  # on each small site

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SeedSpec:
        def number(name: str, default: int, low: int = 1) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise BenchSettingsError(f"{name} must be an integer, got {raw!r}") from None
            if value < low:
                raise BenchSettingsError(f"{name} must be at least {low}, got {raw!r}")
            return value

        return cls(pages=number("BENCH_SEED_PAGES", cls.pages),
                   visitors=number("BENCH_SEED_VISITORS", cls.visitors),
                   days=number("BENCH_SEED_DAYS", cls.days),
                   events=number("BENCH_SEED_EVENTS", cls.events),
                   small_sites=number("BENCH_SEED_SMALL_SITES", cls.small_sites, low=0),
                   small_events=number("BENCH_SEED_SMALL_EVENTS", cls.small_events))

    @property
    def site(self) -> str:
        """The large site's id: names its size, so a smaller quick seed is another site."""
        return f"bench-large-{self.pages}p-{self.visitors}v-{self.days}d-{self.events}e-tr"

    def small_site(self, index: int) -> str:
        return f"bench-small-site-{index:04d}"

    def page(self, rank: int) -> str:
        """Page ids without slashes, so ``/stats/pages/{id}`` needs no escaping."""
        return f"page-{rank:05d}"


def zipf_cumulative(count: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """Cumulative weights of ranks 0..count-1, rank k weighing 1/(k+1)^exponent."""
    return list(itertools.accumulate(1 / (k + 1) ** exponent for k in range(count)))


def big_site_events(spec: SeedSpec, anchor_ms: int, seed: int = 13) -> Iterator[PageView]:
    """The large site's history: ``spec.events`` events over the ``spec.days`` days before
    ``anchor_ms``, pages by Zipf-like popularity, visitors uniform, as a tracker sends them
    (User-Agents, referrers, UTM tags: the breakdowns have data; ``-tr`` in the site id).
    Same spec, anchor and seed: the same events, with the same ids."""
    rng = random.Random(seed)
    cumulative = zipf_cumulative(spec.pages)
    total = cumulative[-1]
    span = spec.days * DAY_MS
    for i in range(spec.events):
        rank = min(bisect.bisect(cumulative, rng.random() * total), spec.pages - 1)
        event = PageView(event_id=f"{spec.site}-{i:09d}", site_id=spec.site,
                         page_id=spec.page(rank),
                         user_id=f"visitor-{rng.randrange(spec.visitors):06d}",
                         ts=anchor_ms - 1 - rng.randrange(span), received_at=anchor_ms)
        yield as_tracker_view(event, rng)


def small_site_events(spec: SeedSpec, anchor_ms: int, seed: int = 17) -> Iterator[PageView]:
    """``spec.small_events`` events on each small site, over the same days."""
    rng = random.Random(seed)
    span = spec.days * DAY_MS
    for index in range(spec.small_sites):
        site = spec.small_site(index)
        for i in range(spec.small_events):
            yield PageView(event_id=f"{site}-{i:06d}", site_id=site,
                           page_id=spec.page(int(20 * rng.random() ** 2)),
                           user_id=f"visitor-{rng.randrange(50):03d}",
                           ts=anchor_ms - 1 - rng.randrange(span), received_at=anchor_ms)


def seed_range(spec: SeedSpec, anchor_ms: int) -> tuple[str, str]:
    """``from``/``to`` covering the history and nothing sent later. The anchor is a whole
    hour, so the range is whole days and hours: Redis answers it for 90 days (minute buckets
    would expire after 48 h and send the check to MongoDB)."""
    return iso_z((anchor_ms - spec.days * DAY_MS) // DAY_MS * DAY_MS), iso_z(anchor_ms)


@dataclass(frozen=True)
class SeedInfo:
    spec: SeedSpec
    anchor_ms: int
    seeded_now: bool
    seconds: float

    def as_json(self) -> dict[str, object]:
        return {"spec": asdict(self.spec), "site": self.spec.site,
                "anchor": iso_z(self.anchor_ms), "seeded_in_this_run": self.seeded_now,
                "seconds": round(self.seconds, 1)}


def _read_marker(path: Path, spec: SeedSpec) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("spec") == asdict(spec) else {}


def _write_marker(path: Path, spec: SeedSpec, anchor_ms: int, produced: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": asdict(spec), "anchor_ms": anchor_ms,
                                "produced": produced}, indent=1) + "\n")


async def _views(http: aiohttp.ClientSession, s: BenchSettings, site: str,
                 window: tuple[str, str]) -> int:
    """The site's views within the seeded window (-1 without an answer). Asked of
    ``/stats/compare``, which sums totals only: ``/stats`` would also rank every page."""
    query = {"site_id": site, "from": window[0], "to": window[1]}
    try:
        async with http.get(f"{s.http_url}/stats/compare", params=query,
                            headers=s.stats_headers()) as response:
            body = await response.json()
            if response.status != 200:
                return -1
            return int(body.get("total_views", 0))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return -1


async def _counts(http: aiohttp.ClientSession, s: BenchSettings, spec: SeedSpec,
                  window: tuple[str, str]) -> tuple[int, bool]:
    """(views of the large site, whether the first and last small sites are complete)."""
    big = await _views(http, s, spec.site, window)
    if spec.small_sites == 0:
        return big, True
    ends = {spec.small_site(0), spec.small_site(spec.small_sites - 1)}
    small = [await _views(http, s, site, window) for site in sorted(ends)]
    return big, all(v >= spec.small_events for v in small)


async def _produce(s: BenchSettings, label: str, events: Iterator[PageView], total: int) -> None:
    started = time.monotonic()

    def counted() -> Iterator[PageView]:
        for i, event in enumerate(events, 1):
            if i % 100_000 == 0:
                say(SUITE, f"  {label}: {i:,}/{total:,} produced "
                           f"({i / (time.monotonic() - started):,.0f}/s)")
            yield event

    sent = await produce(s.kafka_bootstrap, s.topic, counted())
    say(SUITE, f"  {label}: {sent:,} records on {s.topic} in "
               f"{time.monotonic() - started:.0f}s")


async def ensure_seeded(s: BenchSettings, spec: SeedSpec, timeout_s: float,
                        marker: Path = MARKER) -> SeedInfo:
    """Seed unless the data is already counted; wait (showing progress) until it is."""
    started = time.monotonic()
    kept = _read_marker(marker, spec)
    anchor_raw = kept.get("anchor_ms")
    anchor_ms = (anchor_raw if isinstance(anchor_raw, int)
                 else int(time.time() * 1000) // HOUR_MS * HOUR_MS)
    produced_raw = kept.get("produced")
    produced = [str(p) for p in produced_raw] if isinstance(produced_raw, list) else []
    window = seed_range(spec, anchor_ms)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            GroupLag(s.kafka_bootstrap, s.topic, s.aggregator_group) as group:
        big, small_done = await _counts(http, s, spec, window)
        if big >= spec.events and small_done:
            say(SUITE, f"{spec.site}: {big:,} views and {spec.small_sites:,} small sites "
                       f"already counted (history to {iso_z(anchor_ms)}); not seeding")
            return SeedInfo(spec, anchor_ms, False, time.monotonic() - started)
        lag = await group.lag()
        say(SUITE, f"{spec.site}: {max(big, 0):,}/{spec.events:,} views counted, small sites "
                   f"{'complete' if small_done else 'incomplete'}; aggregators {lag:,} behind")
        if lag == 0:
            produced = []  # nothing in flight: whatever is missing must be sent (again)
        if big < spec.events and "big" not in produced:
            # Its quota first: the aggregators count its pages by it (bench/sites.py).
            await register_sites(s, spec.site, max_pages=spec.pages)
            say(SUITE, f"producing {spec.events:,} events of {spec.site} ({spec.pages:,} pages,"
                       f" {spec.visitors:,} visitors, {spec.days} days to {iso_z(anchor_ms)})")
            await _produce(s, spec.site, big_site_events(spec, anchor_ms), spec.events)
            produced.append("big")
            _write_marker(marker, spec, anchor_ms, produced)
        if not small_done and "small" not in produced:
            total = spec.small_sites * spec.small_events
            say(SUITE, f"producing {total:,} events over {spec.small_sites:,} small sites")
            await _produce(s, "small sites", small_site_events(spec, anchor_ms), total)
            produced.append("small")
        _write_marker(marker, spec, anchor_ms, produced)
        await _wait_counted(http, group, s, spec, window, started, timeout_s)
    return SeedInfo(spec, anchor_ms, True, time.monotonic() - started)


async def _wait_counted(http: aiohttp.ClientSession, group: GroupLag, s: BenchSettings,
                        spec: SeedSpec, window: tuple[str, str], started: float,
                        timeout_s: float) -> None:
    last_views, last_at = -1, time.monotonic()
    while True:
        big, small_done = await _counts(http, s, spec, window)
        if big >= spec.events and small_done:
            say(SUITE, f"seed counted: {big:,} views on {spec.site} after "
                       f"{time.monotonic() - started:.0f}s")
            return
        now = time.monotonic()
        lag = await group.lag()
        speed = (big - last_views) / (now - last_at) if last_views >= 0 else 0.0
        eta = (f", about {(spec.events - big) / speed:,.0f}s to go" if speed > 0 else "")
        say(SUITE, f"  counted {max(big, 0):,}/{spec.events:,} on {spec.site} "
                   f"({speed:,.0f}/s{eta}); aggregators {lag:,} records behind")
        last_views, last_at = big, now
        if now - started > timeout_s:
            raise RuntimeError(f"seed not counted after {timeout_s:g}s "
                               f"(BENCH_SEED_TIMEOUT_S): {big:,}/{spec.events:,}")
        if lag == 0 and big >= 0:
            await asyncio.sleep(3)  # the last batch may be between MongoDB and Redis
            big, small_done = await _counts(http, s, spec, window)
            if await group.lag() == 0 and (big < spec.events or not small_done):
                raise RuntimeError(f"aggregators idle but only {big:,}/{spec.events:,} views "
                                   f"of {spec.site} counted, small sites "
                                   f"{'complete' if small_done else 'incomplete'} (a flushed "
                                   "Redis rebuilding? events of the same ids elsewhere?)")
        await asyncio.sleep(10)


def main() -> None:
    """``python -m bench.seed``: seed (or check) the bench-query data alone."""
    import os

    s = BenchSettings.from_env(os.environ)
    spec = SeedSpec.from_env(os.environ)
    info = asyncio.run(ensure_seeded(s, spec, seed_timeout_s(os.environ)))
    print(json.dumps(info.as_json(), indent=1))


def seed_timeout_s(env: Mapping[str, str]) -> float:
    raw = env.get("BENCH_SEED_TIMEOUT_S", "").strip()
    return float(raw) if raw else 3600.0


if __name__ == "__main__":
    main()
