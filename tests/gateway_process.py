"""A gateway process that a test starts itself, on a spare port of the private stack, so the
test can signal it, stop Kafka under it or tune its settings without touching the stack's
own gateways (which NGINX and the other tests use)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.stack import OWN_PROCESS_SPARES, ROOT, Stack, eventually


class GatewayProcess:
    """``python -m ingest_gateway`` with the stack's backends; its JSON log goes to a file."""

    def __init__(self, stack: Stack, nth: int, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        """``nth``: which of the stack's spare ports for a test's own processes to take."""
        self.port = stack.spare_port(OWN_PROCESS_SPARES[nth])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**os.environ, **stack.env(), "PORT": str(self.port), **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ingest_gateway", cwd=ROOT, env=self._env,
                stdout=log, stderr=subprocess.STDOUT)

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log_tail()
            try:
                async with http.get(f"{self.url}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout_s=timeout_s, interval_s=0.1,
                         message=f"test gateway on port {self.port} ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def kill(self) -> None:
        """SIGKILL if still running (the test's cleanup); only this process, by its pid."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_lines(self) -> list[dict[str, Any] | str]:
        """Every line of its log: a dict where the line is JSON, else the raw text (which a
        JSON logger never writes: a traceback printed by something else)."""
        lines: list[dict[str, Any] | str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                lines.append(line)
                continue
            lines.append(parsed if isinstance(parsed, dict) else line)
        return lines

    def troubles(self) -> list[dict[str, Any] | str]:
        """Log lines that report an error: level error or critical, an exception attached, or
        text that is not one of our JSON lines."""
        return [line for line in self.log_lines()
                if not isinstance(line, dict)
                or line.get("level") in ("error", "critical") or "exception" in line]
