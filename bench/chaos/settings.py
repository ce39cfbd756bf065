"""Typed settings of a chaos run, read once from the environment and the command line.

``CHAOS_SECONDS`` scales the run: the warm-up and each fault's baseline last that long, and
a part held down by a fault stays down a third of it (at least 5 s). The default (15 s) runs
the whole catalogue in well under 20 minutes on this 2-core machine.

``CHAOS_BROKERS`` (default 3) is the chaos stack's Kafka cluster size: three brokers, so one
run covers every fault including the loss of a partition leader (replication factor 3,
``min.insync.replicas`` 2: what makes ``acks=all`` mean something); 1 runs the rest on the
default single-node topology.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.chaos.faults import BY_NAME, CATALOGUE
from bench.chaos.target import ROOT
from bench.settings import BenchSettingsError, positive_number


class ChaosSettingsError(BenchSettingsError):
    """A chaos variable or option is malformed."""


def parse_faults(raw: str, brokers: int) -> tuple[str, ...]:
    """Named faults in catalogue order; empty: every fault the stack's brokers allow."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ChaosSettingsError(f"unknown faults {unknown}; known: {', '.join(BY_NAME)}")
    chosen = set(names) if names else {f.name for f in CATALOGUE if f.brokers <= brokers}
    return tuple(f.name for f in CATALOGUE if f.name in chosen)


@dataclass(frozen=True)
class ChaosSettings:
    seconds: float = 15.0
    rate: float = 300.0  # events/s
    port_base: int = 20000
    brokers: int = 3
    keep: bool = False
    faults: tuple[str, ...] = ()
    sites: int = 3
    recovery_timeout_s: float = 300.0
    settle_timeout_s: float = 60.0
    drain_timeout_s: float = 90.0
    check_timeout_s: float = 300.0
    seed: int | None = None
    results_dir: Path = ROOT / "bench" / "results"

    @property
    def outage_s(self) -> float:
        return max(5.0, self.seconds / 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, faults: str | None = None
                 ) -> ChaosSettings:
        brokers = int(positive_number(env, "CHAOS_BROKERS", cls.brokers))
        seed = env.get("CHAOS_SEED", "").strip()
        return cls(seconds=positive_number(env, "CHAOS_SECONDS", cls.seconds),
                   rate=positive_number(env, "CHAOS_RATE", cls.rate),
                   port_base=int(positive_number(env, "CHAOS_PORT_BASE", cls.port_base)),
                   brokers=brokers,
                   keep=env.get("CHAOS_KEEP", "") in ("1", "true", "yes"),
                   faults=parse_faults(faults if faults is not None
                                       else env.get("CHAOS_FAULTS", ""), brokers),
                   seed=int(seed) if seed else None)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["results_dir"] = str(self.results_dir)
        data["outage_s"] = self.outage_s
        return data
