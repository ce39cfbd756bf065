"""An open-loop HTTP load generator: requests sent at fixed times, latency from those times.

Why: wrk is closed-loop (a connection sends its next request only when the last one is
answered), so a slow answer delays the requests behind it and they are never measured:
"coordinated omission". Debian has no wrk2, so this is the open-loop generator. Each request
has a scheduled send time (``rate`` a second, evenly spaced); its latency is measured from
that time, not from when it actually left, so time spent queued behind a slow answer (for
a free connection, or in the generator itself) counts.

Why processes: one Python process sending thousands of requests a second would itself be
the bottleneck, so the schedule is split over worker processes (``python -m bench.openloop``),
interleaved so that together they send the single evenly spaced schedule. Each worker is
told the common start time only once all are ready. The workers report every latency;
the parent merges them. ``max_send_lag_ms`` (how late a request was handed to the client)
shows whether the generator kept up. The schedule and merge maths are pure and tested.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from bench.stats import Latency, percentile

REQUEST_TIMEOUT_S = 30.0


def send_offsets(rate: float, seconds: float, processes: int = 1, index: int = 0
                 ) -> list[float]:
    """Seconds after the start at which worker ``index`` of ``processes`` sends: the
    evenly spaced schedule of ``rate`` requests a second, dealt round-robin."""
    if rate <= 0 or seconds <= 0:
        return []
    total = max(1, math.floor(rate * seconds))
    return [i / rate for i in range(index, total, processes)]


def due(offsets: Sequence[float], cursor: int, elapsed: float) -> int:
    """The index after the last offset at or before ``elapsed``, starting from ``cursor``."""
    while cursor < len(offsets) and offsets[cursor] <= elapsed:
        cursor += 1
    return cursor


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    rate: float  # requested, requests/s
    seconds: float
    scheduled: int
    latencies_ms: tuple[float, ...]  # of the answered requests, from their scheduled time
    errors: int  # non-2xx/3xx, connection errors, timeouts
    max_send_lag_ms: float
    p99_send_lag_ms: float
    cpu_cores: float  # the workers' own CPU use

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
                "latency": self.latency.as_dict(), "max_send_lag_ms": self.max_send_lag_ms,
                "p99_send_lag_ms": self.p99_send_lag_ms, "generator_cpu_cores": self.cpu_cores}


def merge(rate: float, seconds: float, reports: Sequence[dict[str, object]],
          cpu_cores: float = 0.0) -> OpenLoopResult:
    """One result from the workers' reports."""
    latencies: list[float] = []
    lags: list[float] = []
    errors = scheduled = 0
    for report in reports:
        latencies += [float(x) for x in report["latencies_ms"]]  # type: ignore[attr-defined]
        lags += [float(x) for x in report["send_lags_ms"]]  # type: ignore[attr-defined]
        errors += int(report["errors"])  # type: ignore[call-overload]
        scheduled += int(report["scheduled"])  # type: ignore[call-overload]
    return OpenLoopResult(rate, seconds, scheduled, tuple(latencies), errors,
                          max(lags, default=0.0),
                          0.0 if not lags else percentile(lags, 99), cpu_cores)


async def _worker(url: str, rate: float, seconds: float, processes: int, index: int,
                  connections: int, headers: dict[str, str]) -> dict[str, object]:
    offsets = send_offsets(rate, seconds, processes, index)
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as http:
        # warm the connections up, so the first scheduled requests do not pay the connects
        await asyncio.gather(*(_get(http, url) for _ in range(min(connections, 4))),
                             return_exceptions=True)
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        start = loop.time() + (float(line) - time.time())

        async def one(offset: float) -> None:
            nonlocal errors
            try:
                ok = await _get(http, url)
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            if ok:
                latencies.append((loop.time() - start - offset) * 1000)
            else:
                errors += 1

        tasks: set[asyncio.Task[None]] = set()
        cursor = 0
        while cursor < len(offsets):
            elapsed = loop.time() - start
            if offsets[cursor] > elapsed:
                await asyncio.sleep(offsets[cursor] - elapsed)
                continue
            end = due(offsets, cursor, elapsed)
            for offset in offsets[cursor:end]:
                lags.append((elapsed - offset) * 1000)
                task = asyncio.create_task(one(offset))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            cursor = end
        if tasks:
            await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S + 1)
        errors += len(tasks)  # still unanswered: counted as errors
    return {"latencies_ms": [round(x, 3) for x in latencies], "errors": errors,
            "scheduled": len(offsets), "send_lags_ms": [round(x, 3) for x in lags]}


async def _get(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url) as response:
        await response.read()
        return response.status < 400


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, rate: float, seconds: float, headers: dict[str, str] | None = None,
              processes: int = 2, connections: int = 64) -> OpenLoopResult:
    """Send ``rate`` GETs a second to ``url`` for ``seconds`` from ``processes`` workers
    with ``connections`` keep-alive connections in all."""
    processes = max(1, min(processes, math.floor(rate * seconds) or 1))
    per_worker = max(1, connections // processes)
    workers = []
    for index in range(processes):
        args = [sys.executable, "-m", "bench.openloop", url, repr(rate), repr(seconds),
                str(processes), str(index), str(per_worker),
                orjson.dumps(headers or {}).decode()]
        workers.append(await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
    try:
        for proc in workers:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if ready.strip() != b"ready":
                raise RuntimeError(f"open-loop worker did not start: {ready!r}")
        start = time.time() + 0.2
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n".encode())
            await proc.stdin.drain()
        cpu_before = {proc.pid: _cpu_seconds(proc.pid) for proc in workers}
        cpu_after = dict(cpu_before)
        reads = [asyncio.ensure_future(proc.stdout.read())  # type: ignore[union-attr]
                 for proc in workers]
        while not all(r.done() for r in reads):
            for proc in workers:  # the last sample before each worker exits
                cpu_after[proc.pid] = max(cpu_after[proc.pid], _cpu_seconds(proc.pid))
            await asyncio.wait(reads, timeout=0.25, return_when=asyncio.ALL_COMPLETED)
        reports = [orjson.loads(r.result()) for r in reads]
        for proc in workers:
            await proc.wait()
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    cpu = sum(cpu_after.get(pid, 0.0) - before for pid, before in cpu_before.items())
    return merge(rate, seconds, reports, round(max(0.0, cpu) / seconds, 3))


def main(argv: list[str]) -> None:
    url, rate, seconds, processes, index, connections, headers = argv
    import uvloop

    report = uvloop.run(_worker(url, float(rate), float(seconds), int(processes), int(index),
                                int(connections), orjson.loads(headers)))
    sys.stdout.buffer.write(orjson.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
