"""bench.key_memory's table: groups by size, shares and bytes per event add up."""

from __future__ import annotations

from collections import Counter

from bench.key_memory import Usage


def test_rows_are_largest_first_with_shares_bytes_per_event_and_entries() -> None:
    usage = Usage(keys=Counter({("uvp", "m"): 4, ("views", "d"): 1, ("pf", "d"): 2}),
                  bytes=Counter({("uvp", "m"): 600, ("views", "d"): 200, ("pf", "d"): 200}),
                  entries=Counter({("pf", "d"): 30}), events=100)
    assert usage.rows() == [
        ["uvp", "m", "4", "600", "150", "60.0%", "6.0", ""],
        ["views", "d", "1", "200", "200", "20.0%", "2.0", ""],
        ["pf", "d", "2", "200", "100", "20.0%", "2.0", "30"],
        ["all", "", "7", "1,000", "", "100%", "10.0", ""],
    ]
