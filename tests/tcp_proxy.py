"""A TCP relay in front of a real server that notes the time of every connection a client
opens through it, so a test can see how often a process retries while that server is down.

It runs in a thread of its own (its clock is not held up by the test's event loop, nor by
the blocking ``stop_part``/``restore`` calls). Each accepted connection is relayed to the
upstream server; when the upstream refuses (the server is stopped), the client's
connection is closed at once, which the client sees as a lost connection: the same class of
error as a refused one. The relay listens on an ephemeral port, which the kernel guarantees
free and which lies outside every stack's port block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Relay:
    upstream_host: str
    upstream_port: int
    port: int = 0  # known once started
    accepted: list[float] = field(default_factory=list)  # time.monotonic() of each accept
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10), "the relay did not start"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def accepted_between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [t for t in self.accepted if start <= t <= end]

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.accepted.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host,
                                                                 self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            sink.close()
