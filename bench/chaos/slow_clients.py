"""Slow clients against the front door: they must hold neither a gateway nor a query API,
and NGINX must cut them off within its configured timeouts (``infra/nginx/routes.conf``).

Three kinds, a few of each, while the normal load runs (its phase must show no failed or
retried request):

- a **slow reader** asks ``/stats/timeseries`` (a large answer), keeps a 1 KiB receive
  buffer and reads one byte a second: NGINX has the whole answer from the query API at once
  (it buffers upstream answers) and must drop the connection within ``send_timeout`` (or
  ``keepalive_timeout`` once everything fit into the socket buffers);
- a **slow header** (slowloris) sends its request headers one byte a second: cut within
  ``client_header_timeout``, which bounds the whole header;
- a **slow body** sends ``POST /events`` with its body one byte a second for a few seconds,
  then stalls: NGINX buffers request bodies, so no gateway sees it, and the stall is cut
  within ``client_body_timeout`` (which times the gap between two reads: a body that keeps
  trickling faster than that is held by NGINX alone, and only for non-local clients bounded
  by the per-address connection limit).

"Cut by NGINX" is read from the kernel, not guessed from the client: the connection's
server-side socket in ``/proc/net/tcp`` is gone or no longer owned by any process
(inode 0: NGINX closed it). Whether a request reached a service is read from NGINX's access
log (the client's user agent names it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench.chaos.target import ROOT

if TYPE_CHECKING:
    from bench.chaos.faults import FaultContext

ROUTES = ROOT / "infra" / "nginx" / "routes.conf"
PER_KIND = 3
MARGIN_S = 5.0  # timer granularity and our half-second polling
BODY_TRICKLE_S = 4  # body bytes sent (one a second) before the slow body stalls


def nginx_timeouts(routes: Path = ROUTES) -> dict[str, float]:
    """``*_timeout Ns`` settings of the front door's routes, in seconds."""
    found = re.findall(r"^\s*(\w+_timeout)\s+(\d+)s;", routes.read_text(), re.MULTILINE)
    return {name: float(value) for name, value in found}


def server_socket_open(http_port: int, client_port: int) -> bool:
    """Whether a process still holds the server side of the connection from
    ``client_port`` to NGINX's ``http_port`` on 127.0.0.1 (``/proc/net/tcp``)."""
    local, remote = f"0100007F:{http_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == local and cols[2] == remote:
            return cols[9] != "0"  # inode 0: an orphan the kernel finishes alone
    return False


@dataclass
class SlowResult:
    kind: str
    agent: str
    limit_s: float  # by when NGINX must have cut it (from its first byte)
    closed_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.closed_after_s is not None and self.closed_after_s <= self.limit_s


class SlowClient:
    def __init__(self, kind: str, host: str, port: int, request: bytes, body: bytes,
                 limit_s: float, agent: str) -> None:
        self.result = SlowResult(kind, agent, limit_s)
        self._host, self._port, self._request, self._body = host, port, request, body
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self._sock.setblocking(False)

    async def run(self, deadline_s: float) -> SlowResult:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self._sock, (self._host, self._port))
        client_port = self._sock.getsockname()[1]
        started = time.monotonic()
        trickle = asyncio.create_task(self._trickle())
        seen_open = False  # accepted by NGINX: before accept() the socket has no owner either
        try:
            while time.monotonic() - started < deadline_s:
                held = server_socket_open(self._port, client_port)
                if seen_open and not held:
                    self.result.closed_after_s = round(time.monotonic() - started, 1)
                    break
                seen_open = seen_open or held
                await asyncio.sleep(0.2 if not seen_open else 0.5)
        finally:
            trickle.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await trickle
            self._sock.close()
        return self.result

    async def _trickle(self) -> None:
        """The kind's slowness: one byte a second, written or read."""
        loop = asyncio.get_running_loop()
        kind = self.result.kind
        if kind == "slow_header":
            for byte in self._request:
                await loop.sock_sendall(self._sock, bytes([byte]))
                await asyncio.sleep(1.0)
            return
        await loop.sock_sendall(self._sock, self._request)
        if kind == "slow_body":
            for byte in self._body[:BODY_TRICKLE_S]:
                await loop.sock_sendall(self._sock, bytes([byte]))
                await asyncio.sleep(1.0)
            await asyncio.Event().wait()  # stalled: never sends the rest
        while True:  # slow_reader
            if not await loop.sock_recv(self._sock, 1):
                return
            await asyncio.sleep(1.0)


def _clients(ctx: FaultContext, timeouts: dict[str, float], run_id: str) -> list[SlowClient]:
    target = ctx.target
    url = urlsplit(target.http_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    site = ctx.notes["site"]
    token = target.env["STATS_TOKEN"]
    out = []
    for i in range(PER_KIND):
        agent = f"chaos-slow-reader-{run_id}-{i}"
        request = (f"GET /stats/timeseries?site_id={site}&period=24h&interval=minute HTTP/1.1"
                   f"\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                   f"User-Agent: {agent}\r\n\r\n").encode()
        limit = max(timeouts["send_timeout"], timeouts["keepalive_timeout"]) + MARGIN_S
        out.append(SlowClient("slow_reader", host, port, request, b"", limit, agent))
    for i in range(PER_KIND):
        agent = f"chaos-slow-header-{run_id}-{i}"
        request = (f"POST /events HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]").encode()
        out.append(SlowClient("slow_header", host, port, request, b"",
                              timeouts["client_header_timeout"] + MARGIN_S, agent))
    for i in range(PER_KIND):
        agent = f"chaos-slow-body-{run_id}-{i}"
        body = json.dumps([{"event_id": uuid.uuid4().hex, "site_id": site,
                            "page_id": "/slow-body", "user_id": "slow"}]).encode()
        request = (f"POST /events HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "\r\n").encode()
        out.append(SlowClient("slow_body", host, port, request, body,
                              BODY_TRICKLE_S + timeouts["client_body_timeout"] + MARGIN_S,
                              agent))
    return out


def access_log_lines(directory: Path, agents: set[str]) -> dict[str, dict[str, Any]]:
    """NGINX's access log line of each of ``agents`` (the request as NGINX finished it)."""
    found: dict[str, dict[str, Any]] = {}
    log = directory / "logs" / "nginx-access.log"
    with contextlib.suppress(OSError), log.open(errors="replace") as lines:
        for line in lines:
            if "chaos-slow-" not in line:
                continue
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if row.get("user_agent") in agents:
                    found[row["user_agent"]] = row
    return found


async def run_slow_clients(ctx: FaultContext) -> None:
    timeouts = nginx_timeouts()
    run_id = uuid.uuid4().hex[:6]
    clients = _clients(ctx, timeouts, run_id)
    ctx.say(f"{len(clients)} slow clients (NGINX timeouts {timeouts})")
    deadline = max(c.result.limit_s for c in clients) + 10
    results = await asyncio.gather(*(c.run(deadline) for c in clients))
    agents = {r.agent for r in results}
    log: dict[str, dict[str, Any]] = {}
    poll_until = time.monotonic() + 5  # NGINX flushes its access log buffer every second
    while time.monotonic() < poll_until and len(log) < len(agents):
        await asyncio.sleep(0.5)
        log = access_log_lines(ctx.target.directory, agents)
    rows = []
    for r in results:
        line = log.get(r.agent, {})
        rows.append({"kind": r.kind, "closed_after_s": r.closed_after_s, "limit_s": r.limit_s,
                     "nginx_status": line.get("status"), "upstream": line.get("upstream"),
                     "upstream_time": line.get("upstream_time")})
        if not r.ok:
            ctx.failures.append(f"{r.kind}: not cut by NGINX within {r.limit_s:g} s "
                                f"(closed after {r.closed_after_s})")
        if r.kind != "slow_reader" and line.get("upstream"):
            ctx.failures.append(f"{r.kind}: reached a service ({line.get('upstream')})")
        if r.kind == "slow_reader":
            times = [float(t) for t in str(line.get("upstream_time", "")).split(",")
                     if t.strip().replace(".", "", 1).isdigit()]
            if not times or max(times) > 5.0:
                ctx.failures.append(f"slow_reader: the query API held it "
                                    f"({line.get('upstream_time')!r} s)")
    ctx.notes["timeouts"] = timeouts
    ctx.notes["clients"] = rows
