"""Logging a run of failures once when it starts and once when it ends.

Retries during an outage happen every few hundred milliseconds; a line per retry would
drown the log. ``Outage`` logs the first failure (with the error) and the first success
after it (with how long it lasted and how many attempts failed), nothing in between.
Used by the store health, the start-up retries, the consumer keepalive and the loss watch;
all run on the event loop, no locking needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class Outage:
    def __init__(self, logger: logging.Logger, down_event: str, up_event: str,
                 clock: Callable[[], float] = time.monotonic, **fields: Any) -> None:
        self._log = logger
        self._down_event = down_event
        self._up_event = up_event
        self._clock = clock
        self._fields = fields
        self.failures = 0  # failed attempts in the current outage; 0 while up
        self._since = 0.0

    @property
    def down(self) -> bool:
        return self.failures > 0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            self._since = self._clock()
            self._log.warning(self._down_event, extra={"fields": {
                **self._fields, "error": repr(error)}})

    def succeeded(self) -> None:
        if self.failures:
            self._log.info(self._up_event, extra={"fields": {
                **self._fields, "failed_attempts": self.failures,
                "down_s": round(self._clock() - self._since, 3)}})
            self.failures = 0
