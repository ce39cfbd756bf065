"""Where the CPU went during a measurement: cores used by each part of the stack.

On a 2-core machine the bottleneck of a stage is usually whichever process group is
busiest, so every measurement records the cores each group used (from ``/proc``: the pids
in ``.run/pids`` and their children, plus the benchmark's own helpers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from bench.settings import ROOT

PIDS_DIR = ROOT / ".run" / "pids"
TICKS = os.sysconf("SC_CLK_TCK")


def stack_groups(pids_dir: Path = PIDS_DIR) -> dict[str, list[int]]:
    """``gateway-1.pid`` ... -> {"gateway": [pid, ...], ...} (the file holds pid and start)."""
    groups: dict[str, list[int]] = {}
    for path in sorted(pids_dir.glob("*.pid")):
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        groups.setdefault(path.stem.rsplit("-", 1)[0] if path.stem[-1].isdigit()
                          else path.stem, []).append(pid)
    return groups


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) of a process; (0, 0.0) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent, _ = _stat(int(entry.name))
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _tree_cpu(roots: list[int], tree: Mapping[int, list[int]]) -> float:
    total, todo = 0.0, list(roots)
    while todo:
        pid = todo.pop()
        total += _stat(pid)[1]
        todo.extend(tree.get(pid, []))
    return total


class CpuWindow:
    """Cores used per group between ``start`` and ``stop`` (1.0 = one core fully busy)."""

    def __init__(self, groups: Mapping[str, list[int]]) -> None:
        self._groups = dict(groups)
        self._before: dict[str, float] = {}
        self._started = 0.0

    def _sample(self) -> dict[str, float]:
        tree = _children()
        return {name: _tree_cpu(pids, tree) for name, pids in self._groups.items()}

    def start(self) -> None:
        self._before = self._sample()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        elapsed = time.monotonic() - self._started
        if elapsed <= 0:
            return {}
        return {name: round(max(0.0, after[name] - self._before.get(name, 0.0)) / elapsed, 2)
                for name in after}


def busiest(shares: Mapping[str, float]) -> str:
    """The group that used the most CPU, e.g. ``gateway 1.21 cores``."""
    if not shares:
        return "-"
    name = max(shares, key=lambda n: shares[n])
    return f"{name} {shares[name]:.2f} cores"
