"""An open-loop HTTP load generator: requests sent at fixed times, latency from those times.

Why: wrk is closed-loop (a connection sends its next request only when the last one is
answered), so a slow answer delays the requests behind it and they are never measured:
"coordinated omission". Debian has no wrk2, so vegeta (Go, built by ``bench.vegeta``) sends
the requests: ``rate`` a second, evenly spaced, each on a free worker (up to
``MAX_WORKERS`` in flight), whatever the server answers. A Python generator did this
before and could not send more than 3,000-4,000 requests/s on 2 cores.

vegeta measures each latency from when a worker took the request up, which is late when
the workers are all busy or the generator is descheduled. So the latencies here are
recomputed from vegeta's per-request results against the ideal schedule: request ``seq``
is due ``seq`` intervals after the start (vegeta paces exactly so), and its latency runs
from then, so time queued in the generator counts. How late each one was sent
(``max_send_lag_ms``) shows whether the generator kept up. The first ``WARMUP_S`` of each
attack, while the workers open their connections, is sent but left out. Parsing and that
maths are pure and tested; ``run`` is the I/O around them.
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import Latency, percentile
from bench.vegeta import ensure_vegeta

REQUEST_TIMEOUT_S = 30
WORKERS = 64  # started at once, so the first requests do not wait for connections
MAX_WORKERS = 2000  # requests in flight at most; beyond that vegeta sends late (send lag)
# sent first and left out of the figures: the workers' connections are opened meanwhile
WARMUP_S = 0.5
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Pace:
    """vegeta's ``-rate=FREQ/PER``: request ``k`` is due ``k * interval_ns`` after the first
    (Go's integer division, as vegeta's ``ConstantPacer`` computes it)."""

    freq: int
    per_ns: int

    @classmethod
    def of(cls, rate: float) -> Pace:
        """Whole requests a second, or one every so many nanoseconds below 1/s."""
        if rate >= 1:
            return cls(round(rate), NS)
        return cls(1, round(NS / rate))

    @property
    def interval_ns(self) -> int:
        return self.per_ns // self.freq

    @property
    def rate(self) -> float:
        return NS / self.interval_ns

    def scheduled(self, seconds: float) -> int:
        """Requests vegeta sends in ``seconds`` when it keeps up: it stops at the duration."""
        return round(seconds * NS) // self.interval_ns

    def flag(self) -> str:
        return f"-rate={self.freq}/{self.per_ns}ns"


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as vegeta recorded it: ``sent_ns`` (Unix time) and ``latency_ns`` are
    from when a worker took it up; ``error`` is a transport error or a non-2xx/3xx status."""

    seq: int
    sent_ns: int
    latency_ns: int
    code: int
    error: str

    @property
    def ok(self) -> bool:
        return not self.error and 200 <= self.code < 400


def parse_results(lines: Iterable[str]) -> list[Hit]:
    """``vegeta encode --to csv`` output (timestamp in Unix nanoseconds, code, latency in
    nanoseconds, bytes out, bytes in, error, body, attack, seq, ...) as hits by ``seq``."""
    hits = [Hit(int(row[8]), int(row[0]), int(row[2]), int(row[1]), row[5])
            for row in csv.reader(lines) if row]
    return sorted(hits, key=lambda h: h.seq)


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    rate: float  # paced, requests/s
    seconds: float
    scheduled: int
    latencies_ms: tuple[float, ...]  # of the answered requests, from their scheduled time
    errors: int  # non-2xx/3xx, connection errors, timeouts, and requests never sent
    max_send_lag_ms: float
    p99_send_lag_ms: float
    cpu_cores: float  # the generator's own CPU use
    unsent: int = 0  # scheduled but not sent within the duration (also in ``errors``)
    error_kinds: dict[str, int] = field(default_factory=dict)  # the commonest, by count

    @property
    def answered_rate(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds > 0 else math.nan

    @property
    def latency(self) -> Latency:
        return Latency.of(self.latencies_ms)

    def as_json(self) -> dict[str, object]:
        return {"rate": round(self.rate, 1), "seconds": self.seconds,
                "scheduled": self.scheduled, "answered": len(self.latencies_ms),
                "answered_rate": round(self.answered_rate, 1), "errors": self.errors,
                "unsent": self.unsent, "error_kinds": self.error_kinds,
                "latency": self.latency.as_dict(), "max_send_lag_ms": self.max_send_lag_ms,
                "p99_send_lag_ms": self.p99_send_lag_ms, "generator_cpu_cores": self.cpu_cores,
                "generator": "vegeta"}


def summarise(pace: Pace, seconds: float, hits: Sequence[Hit], cpu_cores: float = 0.0,
              warmup_s: float = 0.0) -> OpenLoopResult:
    """Latencies from the ideal schedule, errors and send lags of the ``seconds`` of an
    attack after its first ``warmup_s``.

    vegeta never sends request ``seq`` before ``start + seq * interval`` and does not
    record ``start``; the latest start consistent with every hit is
    ``min(sent - seq * interval)``, which the first request, sent on time, fixes to within
    microseconds. Lags are measured from there, so they are never overstated."""
    interval = pace.interval_ns
    start = min((h.sent_ns - h.seq * interval for h in hits), default=0)
    skip = pace.scheduled(warmup_s)
    counted = [h for h in hits if h.seq >= skip]
    latencies: list[float] = []
    lags: list[float] = []
    kinds: Counter[str] = Counter()
    for hit in counted:
        due = start + hit.seq * interval
        lags.append((hit.sent_ns - due) / 1e6)
        if hit.ok:
            latencies.append((hit.sent_ns + hit.latency_ns - due) / 1e6)
        else:
            kinds[hit.error or f"status {hit.code}"] += 1
    scheduled = pace.scheduled(warmup_s + seconds) - skip
    unsent = max(0, scheduled - len(counted))
    return OpenLoopResult(pace.rate, seconds, scheduled, tuple(latencies),
                          sum(kinds.values()) + unsent, max(lags, default=0.0),
                          percentile(lags, 99) if lags else 0.0, cpu_cores, unsent,
                          dict(kinds.most_common(5)))


def targets(url: str, headers: dict[str, str]) -> str:
    """vegeta's http target format: the request line, then one header a line."""
    return "".join([f"GET {url}\n", *(f"{k}: {v}\n" for k, v in headers.items()), "\n"])


def attack_args(binary: Path, pace: Pace, seconds: float, targets_file: Path,
                output: Path) -> list[str]:
    return [str(binary), "attack", pace.flag(), f"-duration={round(seconds * NS)}ns",
            f"-timeout={REQUEST_TIMEOUT_S}s", f"-workers={WORKERS}",
            f"-max-workers={MAX_WORKERS}", f"-connections={MAX_WORKERS}", "-max-body=0",
            f"-targets={targets_file}", f"-output={output}"]


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def attack(targets_text: str, rate: float, seconds: float, warmup_s: float = WARMUP_S,
                 files: dict[str, bytes] | None = None) -> tuple[OpenLoopResult, list[Hit]]:
    """Send ``rate`` requests a second from ``targets_text`` (vegeta's http format, its
    targets taken in turn; ``@NAME`` bodies refer to ``files``, written next to it) for
    ``warmup_s`` and then ``seconds`` more, and measure the latter; also every hit. The
    results are decoded once the attack is over, so decoding does not compete with
    sending."""
    binary = await asyncio.to_thread(ensure_vegeta)
    pace = Pace.of(rate)
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        for name, data in (files or {}).items():
            (Path(tmp) / name).write_bytes(data)
            targets_text = targets_text.replace(f"@{name}\n", f"@{Path(tmp) / name}\n")
        targets_file, output = Path(tmp) / "targets.http", Path(tmp) / "results.bin"
        targets_file.write_text(targets_text)  # headers stay out of argv
        proc = await asyncio.create_subprocess_exec(
            *attack_args(binary, pace, warmup_s + seconds, targets_file, output),
            stderr=asyncio.subprocess.PIPE)
        cpu = 0.0
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not exited.done():
                cpu = max(cpu, _cpu_seconds(proc.pid))  # the last sample before it exits
                await asyncio.wait({exited}, timeout=0.25)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = await proc.stderr.read() if proc.stderr else b""
        if proc.returncode != 0:
            raise RuntimeError(f"vegeta attack exited {proc.returncode}: {stderr.decode()}")
        encode = await asyncio.create_subprocess_exec(
            str(binary), "encode", "--to", "csv", str(output),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await encode.communicate()
        if encode.returncode != 0:
            raise RuntimeError(f"vegeta encode exited {encode.returncode}: {err.decode()}")
    hits = parse_results(out.decode().splitlines())
    cores = round(cpu / (warmup_s + seconds), 3) if seconds > 0 else 0.0
    return summarise(pace, seconds, hits, cores, warmup_s), hits


async def run(url: str, rate: float, seconds: float,
              headers: dict[str, str] | None = None, warmup_s: float = WARMUP_S
              ) -> OpenLoopResult:
    """Send ``rate`` GETs a second to ``url`` for ``warmup_s`` and then ``seconds`` more
    with vegeta, and measure the latter."""
    result, _ = await attack(targets(url, headers or {}), rate, seconds, warmup_s)
    return result
