"""Typed benchmark settings: read once from the environment and ``.run/stack.env``.

``BENCH_SECONDS`` scales every measurement (default 10 s: the whole suite in well under
10 minutes on 2 cores); the other variables pick concurrencies and rates. Service URLs come
from the environment when set, else from the running local stack's ``.run/stack.env``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contracts.topics import AGGREGATOR_GROUP

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / ".run" / "stack.env"


class BenchSettingsError(ValueError):
    """A benchmark variable is malformed, or no stack is described anywhere."""


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _ints(raw: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise BenchSettingsError(f"{name} must be comma-separated integers, got {raw!r}") from None
    if not values or min(values) < 1:
        raise BenchSettingsError(f"{name} needs positive integers, got {raw!r}")
    return values


def positive_number(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number from ``env[name]`` (``default`` when unset); shared with the chaos run."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BenchSettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise BenchSettingsError(f"{name} must be positive, got {raw!r}")
    return value


WRITERS_VARIABLE = "AGGREGATOR_MONGO_WRITERS"


def mongo_writers(env: Mapping[str, str]) -> int:
    """Concurrent ``insert_many`` chunks per aggregator, as the aggregators under test use:
    ``AGGREGATOR_MONGO_WRITERS`` from the environment or the stack's env file, else the
    aggregator settings' own default when they have that setting, else 1 (one insert_many
    at a time, the aggregator before that setting existed)."""
    raw = env.get(WRITERS_VARIABLE, "").strip()
    if raw:
        return int(_ints(raw, WRITERS_VARIABLE)[0])
    from contracts.settings import AggregatorSettings  # no I/O: a frozen dataclass
    for name in ("mongo_writers", "writers", "mongo_insert_writers"):
        default = getattr(AggregatorSettings, name, None)
        if isinstance(default, int) and default >= 1:
            return default
    return 1


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number, zero allowed."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise BenchSettingsError(f"{name} must be a whole number >= 0, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class BenchSettings:
    seconds: float = 10.0
    http_url: str = "http://127.0.0.1:8080"
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic: str = "page-views"
    aggregator_group: str = AGGREGATOR_GROUP
    mongo_url: str = "mongodb://127.0.0.1:27027/"
    redis_url: str = "redis://127.0.0.1:16379/0"
    gateway_urls: tuple[str, ...] = ()
    query_urls: tuple[str, ...] = ()
    stats_token: str = ""
    track_connections: tuple[int, ...] = (16, 64, 256, 512)
    events_connections: tuple[int, ...] = (4, 16, 64)
    limit_connections: tuple[int, ...] = (64, 256)
    wrk_threads: int = 2
    e2e_start_rate: int = 1000
    e2e_max_rate: int = 200_000
    e2e_bisect_steps: int = 2
    e2e_budget_s: float = 0.0  # 0: 30 x BENCH_SECONDS (see ``e2e_budget``)
    freshness_slo_s: float = 1.0
    freshness_goal_ms: float = 100.0
    e2e_rate_goal: int = 10_000
    mongo_db: str = "pageviews"
    mongo_writers: int = 1  # concurrent insert_many chunks per aggregator
    aggregator_events: int = 0  # 0: scaled with ``seconds`` (see ``aggregator_event_count``)
    bench_mongo_db: str = "pageviews_bench"
    drain_timeout_s: float = 240.0
    exact_timeout_s: float = 600.0
    results_dir: Path = ROOT / "bench" / "results"
    cache_dir: Path = Path.home() / ".cache" / "pageviews"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], stack_env: Path = STACK_ENV
                 ) -> BenchSettings:
        env = {**read_env_file(stack_env), **environ}
        if "HTTP_URL" not in env:
            raise BenchSettingsError("no stack: run `make up` (or set HTTP_URL, KAFKA_BOOTSTRAP, "
                                     "MONGO_URL, REDIS_URL)")

        def urls(name: str) -> tuple[str, ...]:
            return tuple(u for u in env.get(name, "").split(",") if u)

        events = env.get("BENCH_AGGREGATOR_EVENTS", "").strip()
        return cls(
            seconds=positive_number(env, "BENCH_SECONDS", cls.seconds),
            http_url=env["HTTP_URL"].rstrip("/"),
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            topic=env.get("KAFKA_TOPIC", cls.topic),
            aggregator_group=env.get("AGGREGATOR_GROUP", cls.aggregator_group),
            mongo_url=env.get("MONGO_URL", cls.mongo_url),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            gateway_urls=urls("GATEWAY_URLS"), query_urls=urls("QUERY_URLS"),
            # the admin token `make up` wrote to stack.env, unless BENCH_STATS_TOKEN is set
            stats_token=env.get("BENCH_STATS_TOKEN") or env.get("STATS_TOKEN", ""),
            track_connections=_ints(env.get("BENCH_TRACK_CONNECTIONS", "16,64,256,512"),
                                    "BENCH_TRACK_CONNECTIONS"),
            events_connections=_ints(env.get("BENCH_EVENTS_CONNECTIONS", "4,16,64"),
                                     "BENCH_EVENTS_CONNECTIONS"),
            limit_connections=_ints(env.get("BENCH_LIMIT_CONNECTIONS", "64,256"),
                                    "BENCH_LIMIT_CONNECTIONS"),
            wrk_threads=int(positive_number(env, "BENCH_WRK_THREADS", cls.wrk_threads)),
            e2e_start_rate=int(positive_number(env, "BENCH_E2E_START_RATE", cls.e2e_start_rate)),
            e2e_max_rate=int(positive_number(env, "BENCH_E2E_MAX_RATE", cls.e2e_max_rate)),
            e2e_bisect_steps=_count(env, "BENCH_E2E_BISECT_STEPS", cls.e2e_bisect_steps),
            e2e_budget_s=positive_number(env, "BENCH_E2E_BUDGET_S", 0.0) if env.get(
                "BENCH_E2E_BUDGET_S", "").strip() else 0.0,
            freshness_slo_s=positive_number(env, "BENCH_FRESHNESS_SLO_S", cls.freshness_slo_s),
            mongo_db=env.get("MONGO_DB", cls.mongo_db),
            mongo_writers=mongo_writers(env),
            aggregator_events=int(_ints(events, "BENCH_AGGREGATOR_EVENTS")[0]) if events else 0,
            bench_mongo_db=env.get("BENCH_MONGO_DB", cls.bench_mongo_db),
            drain_timeout_s=positive_number(env, "BENCH_DRAIN_TIMEOUT_S", cls.drain_timeout_s),
            exact_timeout_s=positive_number(env, "BENCH_EXACT_TIMEOUT_S", cls.exact_timeout_s),
            cache_dir=Path(env.get("PAGEVIEWS_CACHE", str(cls.cache_dir))),
        )

    def e2e_budget(self) -> float:
        """Seconds the e2e rate search may take at most (steps, settling, waiting)."""
        return self.e2e_budget_s or 30 * self.seconds

    def measure_s(self) -> float:
        """How long one steady-state measurement lasts."""
        return self.seconds

    def aggregator_event_count(self) -> int:
        """Events pre-loaded for the drain benchmark: the issue asks for a million, which one
        aggregator on this 2-core box (~2k events/s, MongoDB-insert bound) drains in ~8
        minutes; by default enough for ~2 x BENCH_SECONDS of draining by one aggregator."""
        if self.aggregator_events:
            return self.aggregator_events
        return max(5_000, int(4_000 * self.seconds))

    def stats_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stats_token}"} if self.stats_token else {}

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["results_dir"] = str(self.results_dir)
        data["cache_dir"] = str(self.cache_dir)
        data["stats_token"] = "set" if self.stats_token else ""
        return data
