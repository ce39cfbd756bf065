"""Issue 18's capacity model: what a load needs, from what the benchmarks measured.

Why: the benchmarks measure one 2-core machine; an operator needs to know how many gateway
cores, partitions, aggregators, Redis shards and how much disk a given load takes. This
module turns measured costs (``bench.capacity_inputs`` reads them out of the results JSON)
into that answer, and inverts the same costs for the machine that measured them, so the
model can be checked against what ``make bench`` reached. Pure: values in, values out;
``bench.capacity`` reads the files and prints.

The formulas (``docs/capacity.md`` says why each is what it is):

- cores of a stage = events/s x CPU microseconds per event / 1e6 / headroom;
- aggregators = ceil(events/s / (one aggregator's drain rate x headroom)); partitions = the
  next multiple of the topic's 6 that is at least twice the aggregators;
- Kafka disk a day = events/s x 86,400 x bytes per event x copies; MongoDB the same, once;
- Redis memory counts keys, not events: per site and live bucket a views counter and a
  visitors HyperLogLog, and per page seen in the bucket a ranking entry and a visitors
  HyperLogLog, each at the size the soak measured; a HyperLogLog grows with its visitors
  until Redis makes it dense. Views are assumed spread evenly over a site's pages and (by
  default) each view a new visitor of its key: both make it an upper bound;
- shards = the larger of the CPU bound (Redis runs one core) and the memory bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from contracts.aggregates import DAY, HOUR, MINUTE, TimeUnit
from contracts.page_facts import INLINE_MAX, LEADERBOARD
from contracts.settings import AggregatorSettings, Retention
from contracts.topics import DEFAULT_PARTITIONS, DEFAULT_RETENTION_BYTES, DEFAULT_RETENTION_MS

TOLERANCE = 0.25  # the "within 25%"
SECONDS_A_DAY = 86_400
HORIZON_DAYS = 365  # day buckets are kept for ever: Redis memory is given after a year
KAFKA_COPIES = 3  # contracts.topics.MAX_REPLICAS: what a three-broker cluster keeps
# Redis's own constants (7.0): a dense HyperLogLog is 12 KiB of registers, 14.4 KB as
# MEMORY USAGE counts it (README, "Sizing Redis"); a sparse one turns dense past
# hll-sparse-max-bytes (3,000 by default) of encoding.
DENSE_HLL_BYTES = 14_400
HLL_SPARSE_MAX_BYTES = 3_000
# Stages of the pipeline, each the process groups whose CPU it is (``bench.cpu``).
STAGES: dict[str, tuple[str, ...]] = {
    "gateway": ("gateway",), "nginx": ("nginx",), "kafka": ("kafka",),
    "aggregator": ("aggregator",), "redis": ("redis",), "mongodb": ("ferretdb", "postgres"),
}


@dataclass(frozen=True)
class Measured:
    """One input and where it came from; ``file`` None: not measured, the value assumed."""

    what: str
    value: float
    unit: str
    file: str | None = None
    date: str | None = None
    note: str = ""


@dataclass(frozen=True)
class CpuSample:
    """CPU microseconds per event of each stage at one sustained end-to-end step."""

    rate: float
    us_per_event: Mapping[str, float]
    # Work only the benchmark adds: the load generator, the freshness probes and polls,
    # and the query API answering them.
    bench_us_per_event: Mapping[str, float]
    cores: int | None  # the machine that measured it
    file: str
    date: str
    figure: str = ""
    passed_over: tuple[str, ...] = ()  # higher steps with a stage at 0.0 cores


@dataclass(frozen=True)
class Sustained:
    """The e2e search's answer: the highest rate sustained and the lowest above it that failed
    (None: none failed); the machine's capacity lies in between."""

    rate: float
    first_failed: float | None
    file: str
    date: str


@dataclass(frozen=True)
class RedisMemory:
    """What one key or entry costs in Redis, as the memory soak measured it."""

    counter_bytes: float  # a views counter
    fact_bytes: float  # one page's facts in a bucket (contracts.page_facts), its hash shared
    top_entry_bytes: float  # one page in a bucket's leaderboard
    hll_base_bytes: float  # a sparse HyperLogLog: base + per visitor
    hll_bytes_per_visitor: float
    site_bytes: float  # keys a site has once (its offsets)
    overhead: float  # used_memory growth / MEMORY USAGE of the keys (dictionaries, expiry)
    per_event: float  # used_memory growth per event on the soak (shown, not used)
    file: str
    date: str

    def hll_bytes(self, visitors: float) -> float:
        encoding = self.hll_bytes_per_visitor * visitors
        return DENSE_HLL_BYTES if encoding > HLL_SPARSE_MAX_BYTES else (
            self.hll_base_bytes + encoding)


@dataclass(frozen=True)
class Inputs:
    cpu: CpuSample
    gateway_events: Measured  # us per event, /events x100
    gateway_track: Measured  # us per /track request (one event)
    nginx_track: Measured  # us per /track request
    drain: Measured  # events/s one aggregator drains
    redis: RedisMemory
    kafka_bytes: Measured  # per event, one copy
    mongo_bytes: Measured  # per event, data and indexes


@dataclass(frozen=True)
class Load:
    events_per_s: float
    sites: int
    pages: int
    pages_per_site: float
    headroom: float = 0.6
    shard_memory_gb: float = 25.0
    raw_retention_days: int = AggregatorSettings.raw_retention_days  # MongoDB's raw events
    track_share: float = 0.0  # of events sent one per /track request, not in batches
    views_per_visitor: float = 1.0  # within one bucket's key; 1: every view a new visitor


@dataclass(frozen=True)
class RedisPlan:
    """Redis bytes of every site, by unit; day buckets grow by ``day_per_day`` a day."""

    minute: float
    hour: float
    day_per_day: float
    all_time: float
    sites: float
    horizon_days: int = HORIZON_DAYS

    @property
    def total(self) -> float:
        return (self.minute + self.hour + self.day_per_day * self.horizon_days
                + self.all_time + self.sites)


@dataclass(frozen=True)
class Plan:
    load: Load
    cores: Mapping[str, float]  # stage -> cores, headroom included
    aggregators: int
    partitions: int
    kafka_disk_per_day: float  # bytes, every copy
    kafka_disk_kept: float  # what the topic keeps at its time and size bounds, every copy
    kafka_history_hours: float  # how far back the topic reaches at this load
    redis: RedisPlan
    redis_shards_cpu: int
    redis_shards_memory: int
    mongo_per_day: float
    mongo_kept: float

    @property
    def total_cores(self) -> float:
        return sum(self.cores.values())

    @property
    def redis_shards(self) -> int:
        return max(self.redis_shards_cpu, self.redis_shards_memory)


def cores_needed(events_per_s: float, us_per_event: float, headroom: float) -> float:
    """Cores a stage needs so that it runs at ``headroom`` of them at this rate."""
    return events_per_s * us_per_event / 1e6 / headroom


def aggregators_needed(events_per_s: float, drain_per_aggregator: float, headroom: float
                       ) -> int:
    return max(1, math.ceil(events_per_s / (drain_per_aggregator * headroom)))


def partitions_needed(aggregators: int, step: int = DEFAULT_PARTITIONS) -> int:
    """The next multiple of ``step`` with at least two partitions per aggregator (room to
    add aggregators without re-partitioning, which moves keys between partitions)."""
    return max(step, math.ceil(2 * aggregators / step) * step)


def per_day(events_per_s: float, bytes_per_event: float, copies: int = 1) -> float:
    return events_per_s * SECONDS_A_DAY * bytes_per_event * copies


def distinct(draws: float, values: float) -> float:
    """Expected distinct values among ``draws`` picks spread evenly over ``values``: the most
    any spread gives (a skewed one repeats its popular values)."""
    if values <= 0 or draws <= 0:
        return 0.0
    return values * -math.expm1(-draws / values)


def bucket_bytes(m: RedisMemory, views: float, pages: float, views_per_visitor: float = 1.0
                 ) -> float:
    """One site's keys in one bucket holding ``views`` over up to ``pages`` pages: the views
    and named pages counters, the site's visitors, each page seen's facts (and its own
    HyperLogLog past ``INLINE_MAX`` visitors), and the leaderboard of the best of them (a
    key's visitors: its views / ``views_per_visitor``, at least one)."""
    seen = distinct(views, pages)

    def visitors(key_views: float) -> float:
        return max(1.0, key_views / views_per_visitor)

    per_page = 0.0
    if seen:
        page_visitors = visitors(views / seen)
        per_page = m.fact_bytes + (m.hll_bytes(page_visitors) if page_visitors > INLINE_MAX
                                   else 0.0)
    return (2 * m.counter_bytes + m.hll_bytes(visitors(views)) + seen * per_page
            + min(seen, LEADERBOARD) * m.top_entry_bytes)


def live_buckets(unit: TimeUnit, ttl_s: int) -> int:
    """Buckets of a unit Redis holds at once: the current one and those within their TTL."""
    return math.ceil(ttl_s * 1000 / unit.ms) + 1


def redis_plan(m: RedisMemory, load: Load, retention: Retention | None = None,
               horizon_days: int = HORIZON_DAYS) -> RedisPlan:
    """Every site alike, at ``load.events_per_s / load.sites`` views a second; minute and
    hour buckets as many as their TTLs keep (``contracts.settings.Retention``)."""
    retention = retention or Retention()
    per_site = load.events_per_s / load.sites  # views a second
    scale = load.sites * m.overhead

    def bucket(seconds: float) -> float:
        return scale * bucket_bytes(m, per_site * seconds, load.pages_per_site,
                                    load.views_per_visitor)

    return RedisPlan(
        minute=bucket(MINUTE.ms / 1000) * live_buckets(MINUTE, retention.minute_ttl_s),
        hour=bucket(HOUR.ms / 1000) * live_buckets(HOUR, retention.hour_ttl_s),
        day_per_day=bucket(DAY.ms / 1000), all_time=bucket(horizon_days * SECONDS_A_DAY),
        sites=scale * m.site_bytes, horizon_days=horizon_days)


def stage_costs(inputs: Inputs, track_share: float) -> dict[str, float]:
    """Microseconds of CPU per event of each stage for this load: the gateway's and NGINX's
    from the ingest peaks (``track_share`` of the events one per /track request, the rest in
    /events batches of 100 as the e2e load sends them), the rest from the e2e sample."""
    costs = dict(inputs.cpu.us_per_event)
    costs["gateway"] = ((1 - track_share) * inputs.gateway_events.value
                        + track_share * inputs.gateway_track.value)
    costs["nginx"] = ((1 - track_share) * costs.get("nginx", 0.0)
                      + track_share * inputs.nginx_track.value)
    return costs


def plan(inputs: Inputs, load: Load, retention: Retention | None = None) -> Plan:
    rate, headroom = load.events_per_s, load.headroom
    costs = stage_costs(inputs, load.track_share)
    cores = {stage: cores_needed(rate, costs.get(stage, 0.0), headroom) for stage in STAGES}
    aggregators = aggregators_needed(rate, inputs.drain.value, headroom)
    partitions = partitions_needed(aggregators)
    kafka_day = per_day(rate, inputs.kafka_bytes.value, KAFKA_COPIES)
    kafka_bound = partitions * DEFAULT_RETENTION_BYTES * KAFKA_COPIES
    kafka_kept = min(kafka_day * DEFAULT_RETENTION_MS / 1000 / SECONDS_A_DAY, kafka_bound)
    memory = redis_plan(inputs.redis, load, retention)
    mongo_day = per_day(rate, inputs.mongo_bytes.value)
    return Plan(
        load=load, cores=cores, aggregators=aggregators, partitions=partitions,
        kafka_disk_per_day=kafka_day, kafka_disk_kept=kafka_kept,
        kafka_history_hours=kafka_kept / kafka_day * 24 if kafka_day else math.inf,
        redis=memory,
        redis_shards_cpu=max(1, math.ceil(cores["redis"])),
        redis_shards_memory=max(1, math.ceil(memory.total / (load.shard_memory_gb * 1e9))),
        mongo_per_day=mongo_day,
        mongo_kept=mongo_day * load.raw_retention_days if load.raw_retention_days else math.inf)


@dataclass(frozen=True)
class MachineCheck:
    """The model inverted for the machine that measured it, against what ``make bench``
    reached there: the measured capacity lies in [sustained, first failed)."""

    cores: int
    us_per_event: float  # every stage and the benchmark's own work
    sustained: Sustained

    @property
    def predicted(self) -> float:
        return self.cores * 1e6 / self.us_per_event

    @property
    def ratio(self) -> float:
        return self.predicted / self.sustained.rate

    @property
    def within_tolerance(self) -> bool:
        return 1 - TOLERANCE <= self.ratio <= 1 + TOLERANCE

    @property
    def in_bracket(self) -> bool:
        high = self.sustained.first_failed
        return self.sustained.rate <= self.predicted and (high is None or self.predicted < high)


def check_machine(cpu: CpuSample, sustained: Sustained, cores: int) -> MachineCheck:
    """The highest rate ``cores`` sustain when every stage, and what the benchmark itself
    runs, costs what it did at the sample's rate."""
    total = sum(cpu.us_per_event.values()) + sum(cpu.bench_us_per_event.values())
    return MachineCheck(cores, total, sustained)
