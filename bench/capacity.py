"""``python -m bench.capacity``: what a load needs, from the newest benchmark results.

    python -m bench.capacity --events-per-s 100000 --sites 5000 --pages 200000
    python -m bench.capacity --machine    # the model against what make bench reached here

Prints gateway cores, Kafka partitions and disk, aggregators, Redis shards and memory,
MongoDB storage and the total cores, then every measurement it used with its file and date
(``bench.capacity_inputs``: the newest ``bench/results/bench-*.json`` holding each). The
formulas are in ``bench.capacity_model`` and ``docs/capacity.md``. Reads files only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from bench.capacity_inputs import Doc, MissingMeasurement, inputs, sustained
from bench.capacity_model import DENSE_HLL_BYTES as DENSE
from bench.capacity_model import (
    HLL_SPARSE_MAX_BYTES,
    KAFKA_COPIES,
    TOLERANCE,
    Inputs,
    Load,
    MachineCheck,
    Measured,
    Plan,
    Sustained,
    check_machine,
    live_buckets,
    plan,
)
from bench.settings import ROOT
from bench.table import number, render
from contracts.aggregates import HOUR, MINUTE
from contracts.settings import AggregatorSettings, Retention
from contracts.tenancy import DEFAULT_MAX_PAGES
from contracts.topics import DEFAULT_PARTITIONS, DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_MS

RESULTS = ROOT / "bench" / "results"


def size(value: float) -> str:
    """Bytes in decimal units, three significant digits: ``8.91 TB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:,.3g} PB"


def load_docs(directory: Path) -> list[Doc]:
    """Every results file, newest first (their names start with the run's UTC time)."""
    docs: list[Doc] = []
    for path in sorted(directory.glob("bench-*.json"), reverse=True):
        try:
            docs.append((path.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return docs


def plan_rows(i: Inputs, p: Plan) -> list[tuple[str, str, str]]:
    load, r, m = p.load, p.load.events_per_s, p.redis
    rate = f"{number(r)} ev/s"
    costs = i.cpu.us_per_event

    def cpu(stage: str, us: float, source: str = "e2e") -> tuple[str, str, str]:
        return (f"{stage} cores", number(p.cores[STAGE_KEYS[stage]], 1),
                f"{rate} x {number(us, 1)} us/event ({source}) / {load.headroom:g}")

    share = load.track_share
    gateway_us = (1 - share) * i.gateway_events.value + share * i.gateway_track.value
    nginx_us = (1 - share) * costs.get("nginx", 0.0) + share * i.nginx_track.value

    def mix(batched: str) -> str:
        return {0.0: batched, 1.0: "/track peak"}.get(share, f"{batched} and /track peak")

    kept_days, kept_gib = DEFAULT_RETENTION_MS / 86_400_000, DEFAULT_RETENTION_BYTES / 2**30
    minute_n = live_buckets(MINUTE, Retention().minute_ttl_s)
    hour_n = live_buckets(HOUR, Retention().hour_ttl_s)
    return [
        cpu("gateway", gateway_us, mix("/events x100 peak")),
        cpu("NGINX", nginx_us, mix("e2e")),
        ("aggregators", str(p.aggregators),
         f"{rate} / ({number(i.drain.value)} ev/s drained by one x {load.headroom:g})"),
        cpu("aggregator", costs.get("aggregator", 0.0)),
        ("Kafka partitions", str(p.partitions),
         f"next multiple of {DEFAULT_PARTITIONS} >= 2 x {p.aggregators} aggregators"),
        ("Kafka brokers", f"{KAFKA_COPIES}+",
         f"{KAFKA_COPIES} copies of each partition; more for the cores and disk below"),
        cpu("Kafka", costs.get("kafka", 0.0)),
        ("Kafka disk per day", size(p.kafka_disk_per_day),
         f"{rate} x 86,400 x {number(i.kafka_bytes.value)} B x {KAFKA_COPIES} copies"),
        ("Kafka disk kept", size(p.kafka_disk_kept),
         f"retention {kept_days:g} days or {kept_gib:g} GiB a partition copy, "
         f"whichever is less: {number(p.kafka_history_hours, 1)} h of history at this load"),
        ("Redis shards", str(p.redis_shards),
         f"max(CPU {p.redis_shards_cpu}: one core each, memory {p.redis_shards_memory}: "
         f"{size(m.total)} / {load.shard_memory_gb:g} GB)"),
        cpu("Redis", costs.get("redis", 0.0)),
        ("Redis memory", size(m.total),
         f"after {m.horizon_days} days, then +{size(m.day_per_day)} a day (day buckets)"),
        ("  minute buckets", size(m.minute), f"{minute_n:,} live (48 h) x {load.sites:,} sites"),
        ("  hour buckets", size(m.hour), f"{hour_n:,} live (90 days) x {load.sites:,} sites"),
        ("  day buckets", size(m.day_per_day * m.horizon_days),
         f"{size(m.day_per_day)} a day, kept for ever"),
        ("  all time", size(m.all_time + m.sites), "one bucket a site, and its offsets"),
        cpu("MongoDB", costs.get("mongodb", 0.0)),
        ("MongoDB storage per day", size(p.mongo_per_day),
         f"{rate} x 86,400 x {number(i.mongo_bytes.value)} B"),
        ("MongoDB storage kept", size(p.mongo_kept),
         f"x {load.raw_retention_days} days (MONGO_RAW_RETENTION_DAYS)"),
        ("total cores", number(p.total_cores, 1), "the stages' cores above, headroom included"),
    ]


STAGE_KEYS = {"gateway": "gateway", "NGINX": "nginx", "aggregator": "aggregator",
              "Kafka": "kafka", "Redis": "redis", "MongoDB": "mongodb"}


def measurement_rows(i: Inputs, s: Sustained | None) -> list[tuple[str, str, str, str]]:
    def row(m: Measured) -> tuple[str, str, str, str]:
        if m.file is None:
            return (m.what, f"{number(m.value)} {m.unit}", "not measured", "assumed (above)")
        return (m.what, f"{number(m.value, 1)} {m.unit}", m.file, f"{m.date}; {m.note}")

    c, red = i.cpu, i.redis
    where = (c.file, f"{c.date}; {c.figure}")
    rows = [(f"CPU per event: {stage}", f"{number(us, 1)} us", *where)
            for stage, us in c.us_per_event.items()]
    rows += [(f"CPU per event: {what} (bench only)", f"{number(us, 1)} us", *where)
             for what, us in c.bench_us_per_event.items()]
    rows += [row(i.gateway_events), row(i.gateway_track), row(i.nginx_track), row(i.drain)]
    soak = (red.file, red.date)
    rows += [
        ("Redis used_memory growth per event (soak)", f"{number(red.per_event)} B", *soak),
        ("Redis views counter", f"{number(red.counter_bytes)} B", *soak),
        ("Redis page facts (a page in a bucket)", f"{number(red.fact_bytes)} B", *soak),
        ("Redis leaderboard entry", f"{number(red.top_entry_bytes)} B", *soak),
        ("Redis sparse HyperLogLog",
         f"{number(red.hll_base_bytes)} B + {number(red.hll_bytes_per_visitor, 2)} B/visitor",
         *soak),
        ("Redis keys a site has once", f"{number(red.site_bytes)} B", *soak),
        ("Redis overhead over MEMORY USAGE", f"x {red.overhead:.3f}", *soak),
        ("Redis dense HyperLogLog", f"{number(DENSE)} B", "Redis 7.0 (README)",
         f"past {number(HLL_SPARSE_MAX_BYTES)} B of sparse encoding"),
        row(i.kafka_bytes), row(i.mongo_bytes)]
    if s is not None:
        failed = f", first failed {number(s.first_failed)}" if s.first_failed else ""
        rows.append(("e2e highest sustained rate", f"{number(s.rate)} events/s{failed}",
                     s.file, s.date))
    return rows


def assumptions(i: Inputs, load: Load) -> list[str]:
    notes = [
        f"CPU per event is the e2e step at {number(i.cpu.rate)} ev/s (sustained) on "
        f"{i.cpu.cores or '?'} cores: fixed costs (idle polling, the JVM, FerretDB) are spread "
        "over few events there, so the cores above are an upper bound.",
        "Redis memory counts keys, not events: the soak's growth per event is what a page "
        "not yet seen in its buckets costs (nearly every soak event was one), so it sets the "
        "per-entry sizes; entries are bounded by sites x pages x live buckets. Views spread "
        f"evenly over each site's pages (the most pages seen of any spread), "
        f"{load.views_per_visitor:g} view(s) a visitor within a key: an upper bound.",
    ]
    if load.pages_per_site > DEFAULT_MAX_PAGES:
        notes.append(f"{number(load.pages_per_site)} pages a site is above the default page "
                     f"quota ({DEFAULT_MAX_PAGES:,}): raise max_pages for those sites.")
    notes += [f"{m.what}: {m.note}." for m in (i.kafka_bytes, i.mongo_bytes) if m.file is None]
    notes += [f"passed over {what}" for what in i.cpu.passed_over]
    return notes


def machine_report(check: MachineCheck, i: Inputs, cores_note: str) -> str:
    c, s = i.cpu, check.sustained
    rows = [(stage, number(us, 1)) for stage, us in c.us_per_event.items()]
    rows += [(f"{what} (bench only)", number(us, 1))
             for what, us in c.bench_us_per_event.items()]
    rows.append(("total", number(check.us_per_event, 1)))
    high = f"{number(s.first_failed)}" if s.first_failed else "none failed"
    verdict = "yes" if check.within_tolerance else "NO"
    return "\n".join([
        f"This machine: {c.figure} in {c.file} ({c.date})",
        render(rows, ("CPU per event", "us")),
        "",
        f"model: {check.cores} cores{cores_note} / {number(check.us_per_event, 1)} us an event "
        f"= {number(check.predicted)} events/s",
        f"make bench: highest sustained {number(s.rate)} events/s, lowest failed above it "
        f"{high} ({s.file}, {s.date})",
        f"predicted / sustained = {check.ratio:.2f}: within {TOLERANCE:.0%} "
        f"({1 - TOLERANCE:.2f}..{1 + TOLERANCE:.2f}): {verdict}; inside "
        f"[{number(s.rate)}, {high}): {'yes' if check.in_bracket else 'no'}",
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-s", type=float)
    parser.add_argument("--sites", type=int)
    parser.add_argument("--pages", type=int, help="distinct pages over all sites")
    parser.add_argument("--pages-per-site", type=float, help="default: pages / sites")
    parser.add_argument("--headroom", type=float, default=0.6,
                        help="share of each core, aggregator and shard used at this load")
    parser.add_argument("--shard-memory-gb", type=float, default=25.0)
    parser.add_argument("--retention-days-raw", type=int,
                        default=AggregatorSettings.raw_retention_days,
                        help="days MongoDB keeps raw events (MONGO_RAW_RETENTION_DAYS)")
    parser.add_argument("--track-share", type=float, default=0.0,
                        help="share of events sent one per /track request (0: /events x100)")
    parser.add_argument("--views-per-visitor", type=float, default=1.0,
                        help="views per visitor within one bucket (1: upper bound)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--machine", action="store_true",
                        help="check the model against what make bench reached on this machine")
    args = parser.parse_args(argv)
    load_args = (args.events_per_s, args.sites, args.pages)
    if not args.machine and None in load_args:
        parser.error("--events-per-s, --sites and --pages are needed (or --machine)")
    if None not in load_args and min(load_args) <= 0:
        parser.error("--events-per-s, --sites and --pages must be positive")
    if not 0 < args.headroom <= 1 or not 0 <= args.track_share <= 1:
        parser.error("--headroom must be in (0, 1] and --track-share in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    docs = load_docs(args.results_dir)
    try:
        measured = inputs(docs)
        search = sustained(docs) if args.machine else None
    except MissingMeasurement as exc:
        print(f"capacity: {exc}", file=sys.stderr)
        return 2
    if args.events_per_s is not None:
        load = Load(args.events_per_s, args.sites, args.pages,
                    args.pages_per_site or args.pages / args.sites, args.headroom,
                    args.shard_memory_gb, args.retention_days_raw, args.track_share,
                    args.views_per_visitor)
        p = plan(measured, load)
        print(f"Capacity for {number(load.events_per_s)} events/s, {load.sites:,} sites, "
              f"{load.pages:,} pages ({number(load.pages_per_site)} a site), headroom "
              f"{load.headroom:g}, {load.track_share:.0%} of events as /track\n")
        print(render(plan_rows(measured, p), ("need", "amount", "how")))
        notes = assumptions(measured, load)
        print("\nAssumptions:\n" + "\n".join(textwrap.fill(n, 100, initial_indent="- ",
                                                          subsequent_indent="  ")
                                            for n in notes))
    if search is not None:
        here = os.cpu_count()
        cores = measured.cpu.cores or here or 1
        note = (f" (as measured; this machine has {here} now)" if here and here != cores
                else "")
        print(machine_report(check_machine(measured.cpu, search, cores), measured, note))
    print("\nMeasurements used:")
    print(render(measurement_rows(measured, search),
                 ("measurement", "value", "file", "date; note")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
