"""Typed settings, read once from the environment in each service's ``__main__``.

One frozen object per service, passed down explicitly: no module-level settings, nothing
patched in tests (tests build the object they need). Unknown or malformed values fail at
start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from contracts.aggregates import HOUR, MINUTE
from contracts.event import DEFAULT_LATE_WINDOW_MS
from contracts.failpoints import CRASH_AT_BATCH_VARIABLE, CRASH_AT_VARIABLE, FAILPOINTS
from contracts.topics import AGGREGATOR_GROUP, DEAD_LETTER_TOPIC, PAGE_VIEWS_TOPIC


class SettingsError(ValueError):
    """An environment variable is malformed."""


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        return self._environ.get(name, default).strip() or default

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def items(self, name: str) -> tuple[str, ...]:
        raw = self._environ.get(name, "")
        return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Backends:
    """Where the shared servers are; every service reads the same variables."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    topic: str = PAGE_VIEWS_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    mongo_url: str = "mongodb://127.0.0.1:27027/"
    mongo_db: str = "pageviews"
    redis_url: str = "redis://127.0.0.1:16379/0"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Backends:
        env = _Env(environ)
        return cls(
            kafka_bootstrap=env.text("KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            topic=env.text("KAFKA_TOPIC", cls.topic),
            dead_letter_topic=env.text("KAFKA_DEAD_LETTER_TOPIC", cls.dead_letter_topic),
            mongo_url=env.text("MONGO_URL", cls.mongo_url),
            mongo_db=env.text("MONGO_DB", cls.mongo_db),
            redis_url=env.text("REDIS_URL", cls.redis_url),
        )


@dataclass(frozen=True)
class Retention:
    """How long Redis keeps minute and hour buckets after they end; day buckets stay.

    The aggregator and the replay set these expiries; the query API reads the same values
    to know which buckets Redis no longer holds (and answers those from MongoDB)."""

    minute_ttl_s: int = MINUTE.default_ttl_s or 0  # 48 h
    hour_ttl_s: int = HOUR.default_ttl_s or 0  # 90 days

    def ttl_of(self, unit: str) -> int | None:
        """Seconds a bucket key of this unit (``m``, ``h``, ``d``) lives after the bucket
        ends; None: for ever."""
        return {MINUTE.code: self.minute_ttl_s, HOUR.code: self.hour_ttl_s}.get(unit)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Retention:
        env = _Env(environ)
        retention = cls(
            # At least the "right now" window's minutes; hours at least as long as minutes.
            minute_ttl_s=env.integer("REDIS_MINUTE_TTL_S", cls.minute_ttl_s, minimum=600),
            hour_ttl_s=env.integer("REDIS_HOUR_TTL_S", cls.hour_ttl_s, minimum=3600))
        if retention.hour_ttl_s < retention.minute_ttl_s:
            raise SettingsError("REDIS_HOUR_TTL_S must be >= REDIS_MINUTE_TTL_S")
        return retention


@dataclass(frozen=True)
class GatewaySettings:
    backends: Backends = field(default_factory=Backends)
    host: str = "127.0.0.1"
    port: int = 8101
    produce_timeout_s: float = 2.0
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000
    late_window_ms: int = DEFAULT_LATE_WINDOW_MS
    cors_origins: tuple[str, ...] = ("*",)
    linger_ms: int = 5
    max_batch_size: int = 256 * 1024
    compression: str | None = None
    # HMAC key for pseudonymising user_id before Kafka (contracts.privacy); "" = off.
    user_id_hash_key: str = field(default="", repr=False)
    log_level: str = "INFO"
    # Direct peers whose X-Real-IP names the client (NGINX): addresses or CIDR networks.
    # Anyone else's header is ignored and the peer itself is the client.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        env = _Env(environ)
        if env.items("ALLOWED_SITES"):
            raise SettingsError("ALLOWED_SITES is gone: the sites a deployment serves are "
                                "registered in MongoDB (python -m admin sites add SITE)")
        return cls(
            backends=Backends.from_env(environ),
            host=env.text("HOST", cls.host),
            port=env.integer("PORT", cls.port, minimum=1),
            produce_timeout_s=env.number("PRODUCE_TIMEOUT_S", cls.produce_timeout_s),
            max_body_bytes=env.integer("MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_batch_events=env.integer("MAX_BATCH_EVENTS", cls.max_batch_events, minimum=1),
            late_window_ms=env.integer("LATE_WINDOW_MS", cls.late_window_ms, minimum=60_000),
            cors_origins=env.items("CORS_ORIGINS") or cls.cors_origins,
            linger_ms=env.integer("KAFKA_LINGER_MS", cls.linger_ms),
            max_batch_size=env.integer("KAFKA_MAX_BATCH_BYTES", cls.max_batch_size, minimum=1024),
            compression=_no_compression(env.choice(
                "KAFKA_COMPRESSION", "none", ("none", "gzip", "snappy", "lz4", "zstd"))),
            user_id_hash_key=environ.get("USER_ID_HASH_KEY", "").strip(),
            log_level=env.text("LOG_LEVEL", cls.log_level).upper(),
            trusted_proxies=_networks(env.items("TRUSTED_PROXIES")) or cls.trusted_proxies,
        )


def _networks(items: tuple[str, ...]) -> tuple[str, ...]:
    """TRUSTED_PROXIES items, each an address or a CIDR network."""
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(f"TRUSTED_PROXIES: {item!r} is not an address or a "
                                "network") from None
    return items


@dataclass(frozen=True)
class AggregatorSettings:
    backends: Backends = field(default_factory=Backends)
    retention: Retention = field(default_factory=Retention)
    host: str = "127.0.0.1"
    port: int = 8301
    group_id: str = AGGREGATOR_GROUP
    max_records: int = 2000
    max_wait_ms: int = 20
    # Concurrent insert_many calls per batch: a MongoDB-wire server that scales with writers
    # (FerretDB on PostgreSQL, MongoDB) drains faster with 2-4; FerretDB on SQLite is slower
    # with more than one (measured 2,866 docs/s with one writer, 1,702 with two).
    mongo_writers: int = 1
    backoff_max_s: float = 5.0
    instance: str = "aggregator"
    log_level: str = "INFO"
    crash_at: str | None = None  # a failpoint's name (contracts/failpoints.py); None: off
    crash_at_batch: int = 0
    auto_rebuild: bool = True  # rebuild Redis from the topic when it lost the aggregates
    # Raw events are deleted this many days after their ts (aggregator.raw_retention); 0: kept.
    raw_retention_days: int = 395

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AggregatorSettings:
        env = _Env(environ)
        return cls(
            backends=Backends.from_env(environ),
            retention=Retention.from_env(environ),
            host=env.text("HOST", cls.host),
            port=env.integer("PORT", cls.port, minimum=1),
            group_id=env.text("AGGREGATOR_GROUP", cls.group_id),
            max_records=env.integer("AGGREGATOR_MAX_RECORDS", cls.max_records, minimum=1),
            max_wait_ms=env.integer("AGGREGATOR_MAX_WAIT_MS", cls.max_wait_ms, minimum=1),
            mongo_writers=env.integer("AGGREGATOR_MONGO_WRITERS", cls.mongo_writers,
                                      minimum=1),
            backoff_max_s=env.number("AGGREGATOR_BACKOFF_MAX_S", cls.backoff_max_s),
            instance=env.text("INSTANCE", cls.instance),
            log_level=env.text("LOG_LEVEL", cls.log_level).upper(),
            crash_at=_failpoint(env.text(CRASH_AT_VARIABLE, "")),
            crash_at_batch=env.integer(CRASH_AT_BATCH_VARIABLE, 0),
            auto_rebuild=env.flag("AGGREGATOR_AUTO_REBUILD", cls.auto_rebuild),
            raw_retention_days=env.integer("MONGO_RAW_RETENTION_DAYS", cls.raw_retention_days,
                                           minimum=0),
        )


@dataclass(frozen=True)
class QuerySettings:
    backends: Backends = field(default_factory=Backends)
    retention: Retention = field(default_factory=Retention)
    host: str = "127.0.0.1"
    port: int = 8201
    # Tokens live hashed in MongoDB (contracts.tenancy; python -m admin tokens add).
    auth_disabled: bool = False
    mongo_query_timeout_ms: int = 20_000  # fallback queries give up (503) after this
    # At most this many requests per process are answered from MongoDB at once; another
    # waits at most mongo_queue_ms for a turn, then gets 503 with Retry-After (a flood of
    # expensive fallback queries cannot starve the rest, nor pile up without bound).
    mongo_max_concurrent: int = 4
    mongo_queue_ms: int = 1_000
    # A whole answer (every store call of one request, e.g. compare's two ranges) gives up
    # after this: a 503 before NGINX's proxy_read_timeout (30 s) would cut it off.
    request_timeout_ms: int = 25_000
    # (bucket, page) entries of bucket rankings one request may read to rank a multi-bucket
    # range (those already merged in this process are free); more is a 400.
    max_ranking_entries: int = 2_000_000
    # Per-page visitor counts (pages x time buckets, each a HyperLogLog) one request reads.
    max_page_buckets: int = 20_000
    # How long an answer is reused; well under the 100 ms freshness p99. 0: identical
    # concurrent requests still share one computation, but nothing is kept after it.
    answer_cache_ms: int = 20
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> QuerySettings:
        env = _Env(environ)
        settings = cls(
            backends=Backends.from_env(environ),
            retention=Retention.from_env(environ),
            host=env.text("HOST", cls.host),
            port=env.integer("PORT", cls.port, minimum=1),
            auth_disabled=env.flag("STATS_AUTH_DISABLED", cls.auth_disabled),
            mongo_query_timeout_ms=env.integer("MONGO_QUERY_TIMEOUT_MS",
                                               cls.mongo_query_timeout_ms, minimum=100),
            mongo_max_concurrent=env.integer("MONGO_QUERY_CONCURRENCY",
                                             cls.mongo_max_concurrent, minimum=1),
            mongo_queue_ms=env.integer("MONGO_QUERY_QUEUE_MS", cls.mongo_queue_ms),
            request_timeout_ms=env.integer("QUERY_REQUEST_TIMEOUT_MS", cls.request_timeout_ms,
                                           minimum=100),
            max_ranking_entries=env.integer("QUERY_MAX_RANKING_ENTRIES",
                                            cls.max_ranking_entries, minimum=1),
            max_page_buckets=env.integer("QUERY_MAX_PAGE_BUCKETS", cls.max_page_buckets,
                                         minimum=1),
            answer_cache_ms=env.integer("QUERY_ANSWER_CACHE_MS", cls.answer_cache_ms),
            log_level=env.text("LOG_LEVEL", cls.log_level).upper(),
        )
        if env.items("STATS_TOKENS"):
            raise SettingsError("STATS_TOKENS is gone: tokens are stored hashed in MongoDB "
                                "(python -m admin tokens add --admin)")
        return settings


def _failpoint(name: str) -> str | None:
    if not name:
        return None
    if name not in FAILPOINTS:
        raise SettingsError(f"{CRASH_AT_VARIABLE} must be one of {', '.join(FAILPOINTS)}, "
                            f"got {name!r}")
    return name


def _no_compression(codec: str) -> str | None:
    return None if codec == "none" else codec
