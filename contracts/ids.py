"""Time-ordered event ids (UUID version 7) for events whose client sent none.

Time-ordered ids keep MongoDB's ``_id`` index append-mostly and sort roughly by arrival.
The clock and the random source are injected so tests can pin both.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable


def uuid7(now_ms: int, rand: bytes) -> str:
    """RFC 9562 UUIDv7: 48 bits of Unix milliseconds, version, variant, 74 random bits."""
    if len(rand) < 10:
        raise ValueError("need 10 random bytes")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    rand_int = int.from_bytes(rand[:10], "big")
    value |= ((rand_int >> 68) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62
    value |= rand_int & ((1 << 62) - 1)  # rand_b: 62 bits
    return str(uuid.UUID(int=value))


def event_id_factory(clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                     randbytes: Callable[[int], bytes] = os.urandom) -> Callable[[], str]:
    return lambda: uuid7(clock_ms(), randbytes(10))
