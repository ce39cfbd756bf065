"""Helper processes a benchmark starts itself (trivial apps, a private NGINX, aggregators,
load generators): started with their own log file, stopped by their own pid, always.

Nothing here touches the stack's processes; ``stop`` signals only the pid it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import aiohttp


def spare_port() -> int:
    """A free loopback port (the kernel picks it; a race with another starter is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Helper:
    """One child process; ``stop`` sends SIGTERM, then SIGKILL after ``grace_s``."""

    def __init__(self, name: str, args: Sequence[str], log: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(env) if env is not None else None, cwd=cwd)
        self.log = log

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def helpers() -> Iterator[list[Helper]]:
    """A list to start helpers into; every one still running is stopped on the way out."""
    started: list[Helper] = []
    try:
        yield started
    finally:
        for helper in reversed(started):
            helper.stop()


async def wait_http(url: str, timeout_s: float = 60.0, helper: Helper | None = None) -> None:
    """Until ``url`` answers 2xx; fail early if the helper serving it died."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if helper is not None and not helper.running():
                raise RuntimeError(f"{helper.name} exited: {helper.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s}s")
            await asyncio.sleep(0.1)
