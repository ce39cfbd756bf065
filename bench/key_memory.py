"""Redis memory of sites' aggregates, by aggregate and time unit: ``MEMORY USAGE`` of every
key of each site's current generation.

Why: memory is what limits how many sites, pages and buckets one Redis holds (README,
"Sizing Redis"), and estimates from a few sample keys hide which aggregate dominates. Run
against a stack that has counted the sites, for example the query bench's seed:

    .venv/bin/python -m bench.key_memory bench-large-10000p-200000v-30d-1000000e-tr

It reads only (SCAN and MEMORY USAGE, pipelined), so it is safe on a live stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.progress import say
from bench.settings import BenchSettings
from bench.table import markdown, render
from contracts.aggregates import ALL_TIME, FILTERED, PAGE_FACTS, TOP_PAGES, VIEWS, parse_suffix
from contracts.generations import GenerationStore
from contracts.keys import SiteKeys

SUITE = "key-memory"
BATCH = 500
HEADERS = ("aggregate", "unit", "keys", "bytes", "bytes/key", "share", "bytes/event", "entries")


@dataclass
class Usage:
    """Keys and bytes per (aggregate name, unit) of one or more sites."""

    keys: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    # What the keys hold, where they hold many things: pages of the page facts hashes,
    # pages of the leaderboards (``contracts.page_facts``).
    entries: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: int = 0

    def rows(self) -> list[list[str]]:
        total = sum(self.bytes.values()) or 1
        per_event = self.events or 1
        out = [[name, unit, f"{self.keys[k]:,}", f"{self.bytes[k]:,}",
                 f"{self.bytes[k] / self.keys[k]:,.0f}", f"{100 * self.bytes[k] / total:.1f}%",
                 f"{self.bytes[k] / per_event:,.1f}",
                 f"{self.entries[k]:,}" if k in self.entries else ""]
               for k in sorted(self.bytes, key=lambda k: -self.bytes[k]) for name, unit in [k]]
        out.append(["all", "", f"{sum(self.keys.values()):,}", f"{total:,}", "", "100%",
                    f"{total / per_event:,.1f}", ""])
        return out


async def measure(redis: Redis, site_ids: list[str], usage: Usage, match: str | None = None
                  ) -> None:
    """Add the sites' current generations to ``usage`` (events: views and bots, all time).

    Each site's keys are found by a SCAN of the whole keyspace, once per site; ``match``
    (a SCAN pattern every key of the sites matches, such as ``pv:{bench-mem-1a2b3c-*``)
    makes it one SCAN for all of them, which is what many sites need."""
    sites = await GenerationStore(redis).current(site_ids)
    for site in sites.values():
        counted = await redis.mget(site.key(VIEWS, ALL_TIME), site.key(FILTERED, ALL_TIME))
        usage.events += sum(int(v) for v in counted if v is not None)
    names: list[tuple[SiteKeys, str]] = []
    for pattern in [match] if match else [s.generation_match() for s in sites.values()]:
        async for key in redis.scan_iter(match=pattern, count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            owner = sites.get(name[name.find("{") + 1:name.find("}")])
            if owner is not None and name.startswith(owner.generation_match()[:-1]):
                names.append((owner, name))
    for start in range(0, len(names), BATCH):
        chunk = names[start:start + BATCH]
        groups = [_group(site, name) for site, name in chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for (_, name), (aggregate, _) in zip(chunk, groups, strict=True):
                pipe.memory_usage(name, samples=0)
                if aggregate in _COUNTED:
                    pipe.execute_command(_COUNTED[aggregate], name)
            replies = iter(await pipe.execute())
        for group in groups:
            usage.keys[group] += 1
            usage.bytes[group] += int(next(replies) or 0)
            if group[0] in _COUNTED:
                usage.entries[group] += int(next(replies) or 0)


_COUNTED = {PAGE_FACTS.name: "HLEN", TOP_PAGES.name: "ZCARD"}  # entries, as the model needs


def _group(site: SiteKeys, name: str) -> tuple[str, str]:
    """(aggregate, unit) of a key: ``(other key)`` for a key the catalog does not name."""
    try:
        parsed = parse_suffix(site.suffix_of(name))
    except ValueError:
        return site.suffix_of(name).split(":", 1)[0], "(other key)"
    return parsed.aggregate.name, parsed.scope.unit or "all time"


async def run(settings: BenchSettings, sites: list[str]) -> Usage:
    redis = Redis.from_url(settings.redis_url)
    usage = Usage()
    try:
        say(SUITE, f"reading {', '.join(sites)}")
        await measure(redis, sites, usage)
    finally:
        await redis.aclose()
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sites", nargs="+", help="site ids")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    usage = asyncio.run(run(BenchSettings.from_env(os.environ), args.sites))
    print((markdown if args.markdown else render)(usage.rows(), HEADERS))
    print(f"events counted (views + filtered bots): {usage.events:,}")


if __name__ == "__main__":
    main()
