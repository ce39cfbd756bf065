"""The private stack ``make chaos`` runs on: started from this checkout with
``infra/stack.py up``, its own ``STACK_DIR`` (``.chaos-stack/b<brokers>``), its own port
block (``CHAOS_PORT_BASE``, default 20000: the block of 100 below the tests' 21000-31900),
its own topic and group names and no user-id hashing (the check compares the visitor ids it
sent); stopped at the end unless ``CHAOS_KEEP=1``.

Why its own: the run kills, freezes and flushes parts of the stack, which must never be the
user's (``make up``) or the test session's. It refuses to start when a port of its block is
taken by anything but a chaos stack it kept running itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from bench.chaos.settings import ChaosSettings
from bench.chaos.target import PYTHON, ROOT, STACK_PY, ChaosTarget

CHAOS_STACKS = ROOT / ".chaos-stack"
BLOCK = 100
NAMES = {"KAFKA_TOPIC": "chaos-page-views", "AGGREGATOR_GROUP": "chaos-aggregators",
         "USER_ID_HASH_KEY": ""}


class ChaosStackError(RuntimeError):
    """The private stack cannot be started (a port taken, ``up`` failed)."""


def directory_of(settings: ChaosSettings) -> Path:
    return CHAOS_STACKS / f"b{settings.brokers}"


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _names(settings: ChaosSettings) -> dict[str, str]:
    names = dict(NAMES)
    if settings.brokers > 1:
        names["KAFKA_BROKERS"] = str(settings.brokers)
    return names


def _stack(directory: Path, settings: ChaosSettings, *args: str) -> None:
    env = {**os.environ, **_names(settings), "STACK_DIR": str(directory),
           "PORT_BASE": str(settings.port_base)}
    done = subprocess.run([PYTHON, str(STACK_PY), *args], cwd=ROOT, env=env,
                          stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode:
        raise ChaosStackError(f"infra/stack.py {' '.join(args)} exited {done.returncode}")


def _kept(directory: Path) -> bool:
    """Whether this directory holds a chaos stack with parts still running."""
    target_dir = directory / "pids"
    if not target_dir.exists():
        return False
    probe = ChaosTarget(directory, 0, {})
    return any(probe.pid(name) is not None for name in probe.part_names())


def start(settings: ChaosSettings) -> ChaosTarget:
    directory = directory_of(settings)
    if not _kept(directory):
        base = settings.port_base
        taken = [p for p in range(base, base + BLOCK) if port_taken(p)]
        if taken:
            raise ChaosStackError(
                f"ports {taken[:5]} of the chaos block {base}-{base + BLOCK - 1} are taken; "
                "set CHAOS_PORT_BASE to a free block")
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    _stack(directory, settings, "up")
    return ChaosTarget.from_directory(directory, settings.port_base, _names(settings))


def stop(settings: ChaosSettings) -> None:
    directory = directory_of(settings)
    if settings.keep:
        print(f"chaos stack kept running in {directory} (CHAOS_KEEP=1); stop it with "
              f"STACK_DIR={directory} python3 infra/stack.py down", file=sys.stderr)
        return
    _stack(directory, settings, "down")
    shutil.rmtree(directory / "data", ignore_errors=True)
