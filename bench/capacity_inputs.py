"""The capacity model's inputs, read out of benchmark results documents.

Why its own module: each input comes from the newest results file that holds it (a suite
re-run alone replaces only its own figures) and carries that file's name and date, so the
answer says what it stands on; a CPU sample the machine garbled is passed over, and what
no run has measured yet is assumed, and said to be. Pure: ``bench.capacity`` reads the files
(``bench/results/bench-*.json``) and passes them in parsed, newest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.capacity_model import (
    STAGES,
    CpuSample,
    Inputs,
    Measured,
    RedisMemory,
    Sustained,
    distinct,
)

Doc = tuple[str, Mapping[str, Any]]  # (file name, its JSON)
Figure = Mapping[str, Any]

# Until ``make bench-memory`` has recorded them (bench.memory, since issue 18):
KAFKA_ASSUMED = Measured(
    "Kafka bytes per event (one copy)", 200.0, "B/event",
    note="not measured yet, assumed 200 B (the gateway's encoded event, about 189 B, "
         "and its share of the record batch) - run make bench-memory")
MONGO_ASSUMED = Measured(
    "MongoDB bytes per event (data + indexes)", 1000.0, "B/event",
    note="not measured yet, assumed 1,000 B (a 246 B BSON document stored as PostgreSQL "
         "jsonb with three indexes; the README saw 7.6 GB for several million events) - "
         "run make bench-memory")


class MissingMeasurement(LookupError):
    """No results file holds a figure the model needs; the message names the make target."""


def _figures(doc: Doc, suite: str, prefix: str = "") -> list[Figure]:
    return [f for f in doc[1].get("figures", [])
            if f.get("suite") == suite and str(f.get("name", "")).startswith(prefix)]


def _date(doc: Doc) -> str:
    return str(doc[1].get("started_at", "?"))


def _named(doc: Doc, suite: str, name: str) -> Figure | None:
    return next((f for f in _figures(doc, suite) if f.get("name") == name), None)


def zero_stages(cores: Mapping[str, float], rate: float) -> list[str]:
    """Process groups of the pipeline showing no CPU at all while events flowed: a sample
    the machine garbled (seen at 2,500 ev/s: Redis 0.0 cores while it counted every event)."""
    groups = [g for stage in STAGES.values() for g in stage]
    return [g for g in groups if g in cores and rate > 0 and cores[g] == 0]


def _sample(doc: Doc, figure: Figure, passed_over: list[str]) -> CpuSample:
    extra = figure["extra"]
    rate, cores = float(extra["achieved_rate"]), extra["cpu_cores"]
    stage_groups = {g for stage in STAGES.values() for g in stage}

    def us(value: float) -> float:
        return value * 1e6 / rate

    stages = {stage: us(sum(cores[g] for g in groups if g in cores))
              for stage, groups in STAGES.items() if any(g in cores for g in groups)}
    bench = {"query API answering the probes" if g == "query" else g: us(cores[g])
             for g in cores if g not in stage_groups}
    bench["load generator"] = us(float(extra.get("generator_cpu_cores") or 0))
    bench["probes and polls"] = us(float(extra.get("python_cpu_cores") or 0))
    machine_cores = doc[1].get("machine", {}).get("cores")
    return CpuSample(rate, stages, bench, int(machine_cores) if machine_cores else None,
                     doc[0], _date(doc), figure["name"], tuple(passed_over))


def cpu_sample(docs: Sequence[Doc]) -> CpuSample:
    """The e2e step at the highest sustained rate of the newest file that has one with CPU
    figures; a step with a stage at 0.0 cores is passed over for the next one down."""
    passed_over: list[str] = []
    for doc in docs:
        steps = [f for f in _figures(doc, "e2e", "freshness @")
                 if f.get("extra", {}).get("sustained") is True
                 and f["extra"].get("cpu_cores") and f["extra"].get("achieved_rate")]
        for figure in sorted(steps, key=lambda f: -float(f["extra"]["achieved_rate"])):
            zeros = zero_stages(figure["extra"]["cpu_cores"], figure["extra"]["achieved_rate"])
            if not zeros:
                return _sample(doc, figure, passed_over)
            passed_over.append(f"{figure['name']} in {doc[0]}: {', '.join(zeros)} 0.0 cores")
    raise MissingMeasurement("no sustained end-to-end step with CPU figures: run make bench-e2e")


def _peak_cost(docs: Sequence[Doc], peak: str, step: str, group: str, what: str,
               per: str) -> Measured:
    """CPU of ``group`` per request (``per`` 'request') or event at an ingest peak: the
    peak figure names its concurrency, the step figure at it holds the CPU."""
    for doc in docs:
        for top in _figures(doc, "ingest", peak):
            c = top.get("extra", {}).get("concurrency")
            figure = _named(doc, "ingest", f"{step} c={c}") or {}
            extra = figure.get("extra", {})
            cores = extra.get("cpu_cores", {}).get(group)
            rate = float((extra.get("requests_per_s") if per == "request"
                          else figure.get("value")) or 0)
            if cores and rate > 0:
                return Measured(what, cores * 1e6 / rate, f"us/{per}", doc[0], _date(doc),
                                f"{step} c={c}: {rate:,.0f} {per}s/s, {cores} cores")
    raise MissingMeasurement(f"no '{peak}' figure with CPU: run make bench-ingest")


def gateway_costs(docs: Sequence[Doc]) -> tuple[Measured, Measured, Measured]:
    """(gateway per event in /events x100, gateway per /track, NGINX per /track)."""
    return (
        _peak_cost(docs, "/events x100 peak", "/events x100", "gateway",
                   "gateway CPU per event, /events x100 peak", "event"),
        _peak_cost(docs, "/track peak", "/track", "gateway",
                   "gateway CPU per /track request, peak", "request"),
        _peak_cost(docs, "/track peak", "/track", "nginx",
                   "NGINX CPU per /track request, peak", "request"))


def drain(docs: Sequence[Doc]) -> Measured:
    """One aggregator's drain of /track events (not the tracker events' variant)."""
    for doc in docs:
        for figure in _figures(doc, "aggregator", "drain, 1 aggregator ("):
            if figure.get("value"):
                return Measured("drain, one aggregator", float(figure["value"]), "events/s",
                                doc[0], _date(doc), figure["name"])
    raise MissingMeasurement("no 'drain, 1 aggregator' figure: run make bench-aggregator")


def sustained(docs: Sequence[Doc]) -> Sustained:
    for doc in docs:
        figure = _named(doc, "e2e", "highest sustained rate")
        if figure and figure.get("value"):
            rate = float(figure["value"])
            failed = [float(r) for r, ok in figure.get("extra", {}).get("tried") or []
                      if not ok and r > rate]
            return Sustained(rate, min(failed) if failed else None, doc[0], _date(doc))
    raise MissingMeasurement("no 'highest sustained rate' figure: run make bench-e2e")


def _soak(docs: Sequence[Doc]) -> tuple[Doc, Figure] | None:
    for doc in docs:  # the newest of the page facts layout (4: it has "pf" rows)
        figure = _named(doc, "memory", "Redis growth per event (soak)")
        rows = (figure or {}).get("extra", {}).get("by_aggregate") or []
        if figure and figure.get("value") and any(r["aggregate"] == "pf" for r in rows):
            return doc, figure
    return None


def _count(text: object) -> float:
    return float(str(text).replace(",", "") or 0)


def redis_memory(docs: Sequence[Doc]) -> RedisMemory:
    """Per-key costs from the soak's MEMORY USAGE by aggregate and unit. A HyperLogLog's
    size is fitted through two sparse ones of the site's visitors: a minute's (a few hundred
    views) and all time's (thousands); visitors are the distinct ones expected among a key's
    events drawn from the soak's visitors. A page's facts and leaderboard entry: their keys'
    bytes over the entries they hold."""
    found = _soak(docs)
    if found is None:
        raise MissingMeasurement("no Redis memory soak of the page facts layout: run "
                                 "make bench-memory")
    doc, figure = found
    extra = figure["extra"]
    events, visitors = float(extra["events_counted"]), float(extra["visitors"])
    rows = [(r["aggregate"], r["unit"], _count(r["keys"]), _count(r["bytes"]),
             _count(r.get("entries") or 0))
            for r in extra["by_aggregate"] if r["aggregate"] != "all"]

    def total(aggregate: str, unit: str | None = None) -> tuple[float, float, float]:
        picked = [(k, b, e) for a, u, k, b, e in rows if a == aggregate and unit in (None, u)]
        return (sum(k for k, _, _ in picked), sum(b for _, b, _ in picked),
                sum(e for _, _, e in picked))

    (minute_keys, minute_bytes, _), (site_keys, site_bytes, _) = (total("uv", "m"),
                                                                  total("uv", "all time"))
    x1, x2 = (distinct(events / keys, visitors) for keys in (minute_keys, site_keys))
    slope = (site_bytes / site_keys - minute_bytes / minute_keys) / (x2 - x1)
    counters, facts, top = total("views"), total("pf"), total("top")
    other = sum(b for _, u, _, b, _ in rows if u == "(other key)")
    return RedisMemory(
        counter_bytes=counters[1] / counters[0],
        fact_bytes=facts[1] / facts[2], top_entry_bytes=top[1] / top[2],
        hll_base_bytes=minute_bytes / minute_keys - slope * x1, hll_bytes_per_visitor=slope,
        site_bytes=other / float(extra["sites"]),
        overhead=max(1.0, float(figure["value"]) * events / float(extra["soak_keys_bytes"])),
        per_event=float(figure["value"]), file=doc[0], date=_date(doc))


def stored_bytes(docs: Sequence[Doc], store: str, assumed: Measured) -> Measured:
    """Bytes per event the soak saw a store (``kafka``, ``mongo``) grow by, from the newest
    soak that recorded it; else ``assumed``."""
    for doc in docs:
        figure = _named(doc, "memory", "Redis growth per event (soak)")
        recorded = (figure or {}).get("extra", {}).get(store) or {}
        value = recorded.get("bytes_per_event")
        if value is not None and math.isfinite(value) and value > 0:
            return Measured(assumed.what, float(value), "B/event", doc[0], _date(doc),
                            f"{recorded.get('events', 0):,} events of the soak")
    return assumed


def inputs(docs: Sequence[Doc]) -> Inputs:
    gateway_events, gateway_track, nginx_track = gateway_costs(docs)
    return Inputs(cpu=cpu_sample(docs), gateway_events=gateway_events,
                  gateway_track=gateway_track, nginx_track=nginx_track, drain=drain(docs),
                  redis=redis_memory(docs),
                  kafka_bytes=stored_bytes(docs, "kafka", KAFKA_ASSUMED),
                  mongo_bytes=stored_bytes(docs, "mongo", MONGO_ASSUMED))
