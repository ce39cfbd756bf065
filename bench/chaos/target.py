"""The stack a chaos run works on: its addresses, and the only ways the run touches its
processes.

Why a value passed around rather than settings read at import: ``make chaos`` runs on a
private stack of its own and ``tests/e2e/test_chaos.py`` on the test session's private
stack, with the same code; each hands in its stack's directory and port base. Processes are
signalled only through their recorded pid checked against its kernel start time (as
``infra/stack.py`` does), and restored with ``infra/stack.py up`` given this stack's
``STACK_DIR``, ``PORT_BASE`` and names, so nothing here can reach the user's stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
STACK_PY = ROOT / "infra" / "stack.py"
_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable
SERVICE_PREFIXES = ("gateway-", "aggregator-", "query-")


class StackCommandError(RuntimeError):
    """``infra/stack.py`` failed on the chaos stack (its output is in the message)."""


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def start_time(pid: int) -> str | None:
    """The kernel start time of a live (not zombie) process: with the pid it names one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


@dataclass(frozen=True)
class ChaosTarget:
    directory: Path  # the stack's STACK_DIR
    port_base: int
    env: Mapping[str, str]  # its stack.env
    # What infra/stack.py must be given again on every `up` so a restarted part is the
    # same as before (topic and group names, the user-id hashing key).
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_directory(cls, directory: Path, port_base: int,
                       names: Mapping[str, str]) -> ChaosTarget:
        env = read_env_file(directory / "stack.env")
        return cls(directory, port_base, env, dict(names))

    def urls(self, name: str) -> tuple[str, ...]:
        return tuple(u for u in self.env.get(name, "").split(",") if u)

    @property
    def http_url(self) -> str:
        return self.env["HTTP_URL"]

    @property
    def brokers(self) -> int:
        return int(self.env.get("KAFKA_BROKERS", "1"))

    def kafka_parts(self) -> list[str]:
        """infra/stack.py's names: ``kafka`` alone, ``kafka-1`` ... ``kafka-N`` in a cluster."""
        n = self.brokers
        return ["kafka"] if n == 1 else [f"kafka-{i}" for i in range(1, n + 1)]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['STATS_TOKEN']}"}

    def service_env(self) -> dict[str, str]:
        """The environment a tool of the stack (the replay CLI) runs with."""
        return {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}

    def command_env(self) -> dict[str, str]:
        env = {**os.environ, **self.names, "STACK_DIR": str(self.directory),
               "PORT_BASE": str(self.port_base),
               "KAFKA_TOPIC": self.env["KAFKA_TOPIC"],
               "AGGREGATOR_GROUP": self.env["AGGREGATOR_GROUP"]}
        if "KAFKA_BROKERS" in self.env:
            env["KAFKA_BROKERS"] = self.env["KAFKA_BROKERS"]
        return env

    async def stack(self, *args: str, timeout_s: float = 300.0) -> str:
        """``infra/stack.py ARGS`` on this stack, without blocking the event loop (the load
        keeps running); its output, or StackCommandError."""
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(STACK_PY), *args,
            cwd=ROOT, env=self.command_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise StackCommandError(f"infra/stack.py {' '.join(args)}: no end in "
                                    f"{timeout_s:g} s") from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise StackCommandError(f"infra/stack.py {' '.join(args)} exited "
                                    f"{proc.returncode}: {text[-2000:]}")
        return text

    # ------------------------------------------------------------------ processes

    def part_names(self) -> list[str]:
        pids = self.directory / "pids"
        return sorted(p.stem for p in pids.glob("*.pid")) if pids.exists() else []

    def recorded(self, name: str) -> tuple[int, str] | None:
        try:
            pid_text, started = (self.directory / "pids" / f"{name}.pid").read_text().split()
        except (OSError, ValueError):
            return None
        return int(pid_text), started

    def pid(self, name: str) -> int | None:
        """The part's live pid, or None (not recorded, dead, or the pid names another)."""
        recorded = self.recorded(name)
        if recorded is None:
            return None
        pid, started = recorded
        return pid if start_time(pid) == started else None

    def signal(self, name: str, sig: signal.Signals) -> int:
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} of the chaos stack is not running")
        os.kill(pid, sig)
        return pid

    def dead_parts(self) -> list[str]:
        return [name for name in self.part_names() if self.pid(name) is None]
