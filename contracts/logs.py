"""Structured logging: one JSON object per line on stderr, shared by every service.

Extra context goes in ``logger.info("event_name", extra={"fields": {...}})``; the message is
a short snake_case event name so logs can be filtered by it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self._static = {"service": service, "instance": instance}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self._static,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class RepeatFilter(logging.Filter):
    """Lets one line per (logger, message) through per ``window_s``; the next one says how
    many it stood for. Why: during an outage aiokafka warns on every reconnect attempt
    (``Heartbeat failed``, ``coordinator dead``), which buries our own once-per-state-change
    lines. Only aiokafka's loggers are held back."""

    PREFIXES = ("aiokafka",)

    def __init__(self, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (shown at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.PREFIXES):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        shown_at, held = self._seen.get(key, (float("-inf"), 0))
        if now - shown_at < self._window_s:
            self._seen[key] = (shown_at, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded, whatever the third party logs
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:  # since the line shown ``repeated_over_s`` ago (the window, or much longer)
            record.fields = {**getattr(record, "fields", {}), "repeated": held,
                             "repeated_over_s": round(now - shown_at)}
        return True


def configure_logging(service: str, instance: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
