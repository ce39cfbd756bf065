"""Time-ordered event ids (UUID version 7) for events whose client sent none.

Time-ordered ids keep MongoDB's ``_id`` index append-mostly and sort by arrival. Ids from
one factory are strictly increasing, also within one millisecond and if the clock steps
back (RFC 9562, section 6.2, method 2: the 74 random bits are incremented by a random
amount while the millisecond stays the same). The clock and the random source are injected
so tests can pin both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

RAND_BITS = 74  # rand_a (12 bits) and rand_b (62 bits) taken as one number
MS_MASK = (1 << 48) - 1


def uuid7(now_ms: int, rand: bytes) -> str:
    """RFC 9562 UUIDv7: 48 bits of Unix milliseconds, version, variant, 74 random bits."""
    if len(rand) < 10:
        raise ValueError("need 10 random bytes")
    return _uuid7(now_ms, int.from_bytes(rand[:10], "big") >> (80 - RAND_BITS))


def _uuid7(now_ms: int, rand74: int) -> str:
    value = (now_ms & MS_MASK) << 80
    value |= 0x7 << 76
    value |= (rand74 >> 62) << 64  # rand_a: 12 bits
    value |= 0b10 << 62
    value |= rand74 & ((1 << 62) - 1)  # rand_b: 62 bits
    # The canonical 8-4-4-4-12 form, formatted directly: a third of ``str(uuid.UUID(int=))``.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pooled_urandom(chunk: int = 4096) -> Callable[[int], bytes]:
    """``os.urandom`` read ``chunk`` bytes at a time: one system call per few hundred ids
    instead of one per id (not thread-safe: one per event loop, like the factory)."""
    buffer, position = b"", 0

    def take(n: int) -> bytes:
        nonlocal buffer, position
        if position + n > len(buffer):
            buffer, position = os.urandom(max(chunk, n)), 0
        position += n
        return buffer[position - n:position]

    return take


def event_id_factory(clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                     randbytes: Callable[[int], bytes] | None = None) -> Callable[[], str]:
    """A generator of strictly increasing UUIDv7 strings (not thread-safe: one per event loop)."""
    randbytes = randbytes or pooled_urandom()
    last_ms = -1
    last_rand = 0

    def new_id() -> str:
        nonlocal last_ms, last_rand
        now = clock_ms()
        if now > last_ms:
            # A fresh millisecond: 73 random bits (the top one of the 74 clear), so the
            # increments below could overflow only after 2**41 ids on one millisecond.
            last_ms, last_rand = now, int.from_bytes(randbytes(10), "big") >> 7
        else:
            # Same millisecond, or the clock stepped back: stay on the last millisecond and
            # step the random bits up by 1..2**32 (unguessable, still strictly increasing).
            last_rand += 1 + int.from_bytes(randbytes(4), "big")
        return _uuid7(last_ms, last_rand)

    return new_id
