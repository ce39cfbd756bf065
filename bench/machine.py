"""What machine and software a run measured: figures mean little without them.

Read at the start of a run (load average included, since other work on a shared machine
makes figures noisy) and written into the results JSON.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.settings import ROOT


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "memory_gib": _memory_gib(), "cpu_model": _cpu_model(),
            "kernel": platform.release(), "load_average_before": load_average()}


def _command_version(args: list[str], pattern: str) -> str:
    """The first match of ``pattern`` in a tool's version output (stdout or stderr)."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def kafka_version(libs: Path | None) -> str:
    if libs is None:
        return "missing"
    jars = sorted(libs.glob("kafka-clients-*.jar"))
    return jars[-1].stem.removeprefix("kafka-clients-") if jars else "unknown"


def versions(kafka_libs: Path | None) -> dict[str, str]:
    packages = {name: metadata.version(name)
                for name in ("aiohttp", "aiokafka", "redis", "pymongo", "uvloop", "orjson")}
    return {
        "python": platform.python_version(), **packages,
        "nginx": _command_version(["nginx", "-v"], r"nginx/(\S+)"),
        "redis-server": _command_version(["redis-server", "--version"], r"v=(\S+)"),
        "wrk": _command_version(["wrk", "-v"], r"wrk (\S+)"),
        "java": _command_version(["java", "-version"], r'version "([^"]+)"'),
        "kafka": kafka_version(kafka_libs),
        "git_commit": _command_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       r"(\w+)"),
    }
