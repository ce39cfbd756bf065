"""Running wrk (Debian's) with one of our Lua scripts, and reading its figures back.

wrk is the load generator for everything measured in requests per second: it is written in
C, so on 2 cores it costs far less CPU than the servers it loads (its own CPU use is
recorded with every figure, to show it is not the bottleneck). ``report.lua`` is appended
to each script to print one JSON line with the percentiles.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.cpu import CpuWindow, stack_groups
from bench.stats import Latency, rate

WRK_DIR = Path(__file__).resolve().parent / "wrk"
MARK = "WRK_JSON "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # connect/read/write/timeout errors and non-2xx/3xx answers
    latency: Latency
    cpu_cores: float  # wrk's own CPU use, in cores (1.0 = one core busy)
    sent: int = -1  # requests written (count.lua), -1: not counted
    answered: int = -1  # answers received (count.lua)
    accepted: int = -1  # answers with status 202 (count.lua)

    @property
    def unanswered(self) -> int:
        """Requests sent that got no answer (cut off at the end, timed out, connection
        lost): each may or may not have been processed."""
        return max(0, self.sent - self.answered) if self.sent >= 0 else 0

    @property
    def ok_requests(self) -> int:
        return max(0, self.requests - self.errors)

    @property
    def rps(self) -> float:
        return rate(self.ok_requests, self.seconds)


def parse(output: str, cpu_cores: float = 0.0) -> WrkResult:
    """The figures from wrk's output (the line ``report.lua`` prints)."""
    for line in output.splitlines():
        if line.startswith(MARK):
            raw = orjson.loads(line[len(MARK):])
            errors = sum(int(raw[k]) for k in ("connect", "read", "write", "status", "timeout"))
            if int(raw["requests"]) == 0:
                errors = max(errors, 1)  # nothing answered within the run: not "0 errors"
            return WrkResult(
                requests=int(raw["requests"]), seconds=raw["duration_us"] / 1e6, errors=errors,
                latency=Latency(raw["p50_us"] / 1000, raw["p99_us"] / 1000,
                                raw["p999_us"] / 1000, raw["max_us"] / 1000),
                cpu_cores=cpu_cores, sent=int(raw.get("sent", -1)),
                answered=int(raw.get("answered", -1)), accepted=int(raw.get("accepted", -1)))
    raise ValueError(f"no {MARK.strip()} line in wrk output: {output[-1000:]!r}")


def script_with_report(script: str, count: bool = False) -> Path:
    """A temporary script: ``wrk/<script>``, then ``wrk/count.lua`` if ``count``, then
    ``wrk/report.lua``."""
    parts = [script, *(["count.lua"] if count else []), "report.lua"]
    text = "\n".join((WRK_DIR / part).read_text() for part in parts)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-",
                                     delete=False) as handle:
        handle.write(text)
    return Path(handle.name)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def run(url: str, script: str, connections: int, seconds: float, threads: int = 2,
              headers: dict[str, str] | None = None, timeout_s: int = 5,
              site: str | None = None, count: bool = False) -> WrkResult:
    """Load ``url`` for ``seconds`` with ``connections`` keep-alive connections; an answer
    slower than ``timeout_s`` counts as an error. ``site`` reaches the script as
    ``BENCH_SITE``; ``count`` counts requests sent, answers and 202s (``count.lua``)."""
    path = script_with_report(script, count)
    env = {**os.environ, **({"BENCH_SITE": site} if site else {})}
    args = ["wrk", "-t", str(max(1, min(threads, connections))), "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s", "--timeout", f"{timeout_s}s", "-s", str(path)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    try:
        proc = await asyncio.create_subprocess_exec(*args, url, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, env=env)
        loop = asyncio.get_running_loop()
        started = loop.time()
        cpu = 0.0
        communicate = asyncio.ensure_future(proc.communicate())
        while not communicate.done():
            cpu = max(cpu, _cpu_seconds(proc.pid))
            await asyncio.wait([communicate], timeout=0.25)
        out, _ = communicate.result()
        elapsed = loop.time() - started
    finally:
        path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode(errors='replace')}")
    return parse(out.decode(errors="replace"), cpu_cores=cpu / elapsed if elapsed else 0.0)


async def run_measured(url: str, script: str, connections: int, seconds: float, threads: int,
                       headers: dict[str, str] | None = None, timeout_s: int = 5,
                       site: str | None = None, count: bool = False
                       ) -> tuple[WrkResult, dict[str, float]]:
    """``run``, plus the cores each part of the stack (and this benchmark) used meanwhile."""
    window = CpuWindow({**stack_groups(), "bench+wrk": [os.getpid()]})
    window.start()
    result = await run(url, script, connections, seconds, threads, headers, timeout_s, site,
                       count)
    return result, window.stop()
