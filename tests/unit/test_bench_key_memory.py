"""bench.key_memory's table: groups by size, shares and bytes per event add up."""

from __future__ import annotations

from collections import Counter

from bench.key_memory import Usage


def test_rows_are_largest_first_with_shares_and_bytes_per_event() -> None:
    usage = Usage(keys=Counter({("uvp", "m"): 4, ("views", "d"): 1}),
                  bytes=Counter({("uvp", "m"): 600, ("views", "d"): 200}), events=100)
    assert usage.rows() == [
        ["uvp", "m", "4", "600", "150", "75.0%", "6.0"],
        ["views", "d", "1", "200", "200", "25.0%", "2.0"],
        ["all", "", "5", "800", "", "100%", "8.0"],
    ]
