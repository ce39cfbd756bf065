"""What Redis spent on one measurement: its slowest commands (SLOWLOG) and per-command costs.

Why: the issue's bound is "no Redis command or script above 1 ms", and one slow script
blocks every other client of a single-threaded Redis, which an HTTP latency hides among the
rest. For each measurement the slow log is reset with a low threshold and drained every
second (atomically: GET and RESET in one MULTI), so a full log never drops the slowest entry;
``INFO commandstats`` and ``latencystats`` (after ``CONFIG RESETSTAT``) give calls and
microseconds per command. Scripts are named by their SHA1 where the source is ours. The
stack's slow-log settings are restored afterwards. Runs only on the benchmark's own stack.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

THRESHOLD_US = 100
MAX_LEN = 10_000
SLOW_US = 1000  # the bound


def script_names() -> dict[str, str]:
    """SHA1 -> a readable name, for every Lua script of the services."""
    from aggregator.counting import redis_sink
    from aggregator.recovery import generations
    from query_api import redis_reads

    sources = {"apply (aggregator)": redis_sink.APPLY_SCRIPT,
               "switch (rebuild)": generations.SWITCH_SCRIPT,
               "read (query API)": redis_reads.READ_SCRIPT}
    return {hashlib.sha1(src.encode()).hexdigest(): name for name, src in sources.items()}


def command_name(args: Sequence[Any], names: Mapping[str, str]) -> str:
    """``EVALSHA <sha> ...`` -> the script's name; else the command in upper case."""
    words = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in args]
    if not words:
        return "?"
    if words[0].upper() == "EVALSHA" and len(words) > 1:
        return "EVALSHA " + names.get(words[1], words[1][:12])
    return words[0].upper()


@dataclass
class SlowSummary:
    """The slow-log entries of one measurement, folded as they are drained."""

    names: Mapping[str, str]
    slowest_us: int = 0
    slowest_command: str = "-"
    entries: int = 0
    above_1ms: int = 0
    per_command_max_us: dict[str, int] = field(default_factory=dict)

    def add(self, entries: Sequence[Mapping[str, Any]]) -> None:
        for entry in entries:
            duration = int(entry.get("duration", 0))
            name = command_name(_args(entry), self.names)
            self.entries += 1
            self.above_1ms += duration > SLOW_US
            self.per_command_max_us[name] = max(duration, self.per_command_max_us.get(name, 0))
            if duration > self.slowest_us:
                self.slowest_us, self.slowest_command = duration, name

    def as_json(self) -> dict[str, object]:
        return {"threshold_us": THRESHOLD_US, "entries": self.entries,
                "above_1ms": self.above_1ms, "slowest_us": self.slowest_us,
                "slowest_command": self.slowest_command,
                "per_command_max_us": dict(sorted(self.per_command_max_us.items(),
                                                  key=lambda kv: -kv[1]))}


def _args(entry: Mapping[str, Any]) -> list[Any]:
    command = entry.get("command", b"")
    if isinstance(command, list | tuple):
        return list(command)
    if isinstance(command, bytes):
        return command.split(b" ")
    return str(command).split(" ")


def command_costs(info: Mapping[str, Any], names: Mapping[str, str], top: int = 6
                  ) -> list[dict[str, object]]:
    """The commands that took the most Redis time, from ``INFO commandstats``."""
    rows = []
    for key, stats in info.items():
        if not key.startswith("cmdstat_") or not isinstance(stats, Mapping):
            continue
        rows.append({"command": key.removeprefix("cmdstat_").upper(),
                     "calls": int(stats.get("calls", 0)), "usec": int(stats.get("usec", 0)),
                     "usec_per_call": float(stats.get("usec_per_call", 0.0))})
    rows.sort(key=lambda r: -int(r["usec"]))  # type: ignore[call-overload]
    return rows[:top]


class RedisWatch:
    """``async with RedisWatch(url) as watch``: ``watch.summary`` and ``watch.costs`` after."""

    def __init__(self, url: str, poll_s: float = 1.0) -> None:
        self._redis: Redis = Redis.from_url(url)
        self._poll_s = poll_s
        self.summary = SlowSummary(script_names())
        self.costs: list[dict[str, object]] = []
        self.latency_percentiles: dict[str, object] = {}
        self._saved: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RedisWatch:
        config = await self._redis.config_get("slowlog-*")
        self._saved = {k: str(v) for k, v in config.items()
                       if k in ("slowlog-log-slower-than", "slowlog-max-len")}
        await self._redis.config_set("slowlog-log-slower-than", THRESHOLD_US)
        await self._redis.config_set("slowlog-max-len", MAX_LEN)
        await self._redis.slowlog_reset()
        await self._redis.config_resetstat()
        self._task = asyncio.create_task(self._poll())
        return self

    async def _drain(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.slowlog_get(MAX_LEN)
            pipe.slowlog_reset()
            entries, _ = await pipe.execute()
        self.summary.add(entries)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self._drain()

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            await self._drain()
            names = self.summary.names
            self.costs = command_costs(await self._redis.info("commandstats"), names)
            latency = await self._redis.info("latencystats")
            self.latency_percentiles = {k.removeprefix("latency_percentiles_usec_"): v
                                        for k, v in latency.items()
                                        if k.removeprefix("latency_percentiles_usec_").upper()
                                        in {str(c["command"]) for c in self.costs}}
        finally:
            for key, value in self._saved.items():
                await self._redis.config_set(key, value)
            await self._redis.aclose()
