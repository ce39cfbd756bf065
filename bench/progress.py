"""Progress lines on stderr, so a long run shows what it is doing and how far it is.

Results go to stdout (the table) and JSON; progress never mixes with them.
"""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def say(suite: str, text: str) -> None:
    elapsed = time.monotonic() - _START
    print(f"[{elapsed:6.1f}s] {suite:<10} {text}", file=sys.stderr, flush=True)
