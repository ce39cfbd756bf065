"""The record of one benchmark run: limits, figures, machine, settings; written as JSON.

Every suite adds ``Figure``s and ``Limit``s to one ``Run``; a figure names the limit it is
compared with, and the ratio is computed from the two when the run is shown or saved, so a
figure and its limit always come from the same run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import Latency, ratio


@dataclass(frozen=True, slots=True)
class Limit:
    """What this machine can do at best for one kind of work (or a target, for an SLO)."""

    name: str
    value: float
    unit: str
    how: str


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured result: throughput (or a latency, for freshness) and its limit's name."""

    suite: str
    name: str
    value: float
    unit: str
    latency: Latency | None = None
    errors: int = 0
    limit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    suites: tuple[str, ...]
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    limits: dict[str, Limit] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # exactly-once, per suite

    def add_check(self, suite: str, verdict: dict[str, Any]) -> None:
        self.checks.append({"suite": suite, **verdict})

    @property
    def exact(self) -> bool:
        """Every exactly-once check of the run passed (True when none ran)."""
        return all(c["ok"] for c in self.checks)

    def add_limit(self, limit: Limit) -> None:
        self.limits[limit.name] = limit

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)

    def ratio_of(self, figure: Figure) -> float | None:
        limit = self.limits.get(figure.limit) if figure.limit else None
        return ratio(figure.value, limit.value if limit else None)

    def ratio_to(self, value: float, limit_name: str) -> float | None:
        limit = self.limits.get(limit_name)
        return ratio(value, limit.value if limit else None)

    def as_json(self) -> dict[str, Any]:
        figures = []
        for f in self.figures:
            row = asdict(f)
            row["latency"] = f.latency.as_dict() if f.latency else None
            row["ratio"] = self.ratio_of(f)
            figures.append(row)
        return {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "duration_s": round(time.time() - self.started_at, 1),
            "suites": list(self.suites), "machine": self.machine, "versions": self.versions,
            "settings": self.settings,
            "limits": {name: asdict(limit) for name, limit in self.limits.items()},
            "figures": figures, "notes": self.notes, "exactly_once": self.checks,
        }


def _finite(value: Any) -> Any:
    """JSON has no NaN: a figure that was not measured is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def save(run: Run, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.started_at))
    path = directory / f"bench-{stamp}-{'-'.join(run.suites)}.json"
    path.write_text(json.dumps(_finite(run.as_json()), indent=2) + "\n")
    return path


def load_latest(directory: Path, suite: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The newest results file (optionally: the newest that includes ``suite``)."""
    for path in sorted(directory.glob("bench-*.json"), reverse=True):
        data: dict[str, Any] = json.loads(path.read_text())
        if suite is None or suite in data.get("suites", []):
            return path, data
    raise FileNotFoundError(f"no benchmark results in {directory}; run `make bench` first")


def latest_by_suite(directory: Path, suites: tuple[str, ...]) -> dict[str, Any]:
    """One document from the newest results of each suite (a suite re-run alone replaces
    only its own figures). Each figure keeps the ratio computed in its own run; the limits
    are those of the files used, the newest winning; ``sources`` names the files."""
    merged: dict[str, Any] = {"figures": [], "limits": {}, "sources": {}, "notes": []}
    for suite in suites:
        try:
            path, data = load_latest(directory, suite)
        except FileNotFoundError:
            continue
        for f in data["figures"]:
            if f["suite"] == suite:
                own = data.get("limits", {}).get(f.get("limit") or "")
                merged["figures"].append({**f, "own_limit": own})  # its own run's limit
        merged["limits"] = {**data.get("limits", {}), **merged["limits"]}
        merged["sources"][suite] = {"file": path.name, "started_at": data["started_at"],
                                    "machine": data["machine"]}
        merged["notes"] += [n for n in data.get("notes", []) if n not in merged["notes"]]
    return merged
