"""Issue 14's goals as a table: each goal figure's value, its limit, the ratio and whether
it is met.

A suite marks a figure as a goal with ``extra["goal"]``: ``min_ratio`` (the ratio to its
limit must reach it), ``max_ratio`` (must not exceed it: latencies), ``or_min_value`` (met
anyway when the value itself reaches it), ``min_value`` (the value must exceed it, for a
figure with no limit), ``max_value`` (must not exceed it: a cost such as bytes an event),
``text`` (the goal in words). Pure formatting of the JSON a run writes, like ``bench.table``.
"""

from __future__ import annotations

from typing import Any

from bench.table import number, percent

HEADERS = ("goal", "measured", "limit", "ratio", "target", "met")


def met(value: float | None, ratio: float | None, goal: dict[str, Any]) -> bool | None:
    """Whether a figure meets its goal; None when it was not measured."""
    if value is None:
        return None
    if "min_value" in goal:
        return bool(value > goal["min_value"])
    if "max_value" in goal:
        return bool(value <= goal["max_value"])
    floor = goal.get("or_min_value")
    if floor is not None and value >= floor:
        return True
    if ratio is None:
        return None
    if "min_ratio" in goal:
        return bool(ratio >= goal["min_ratio"])
    if "max_ratio" in goal:
        return bool(ratio <= goal["max_ratio"])
    return None


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    limits = data.get("limits", {})
    out: list[tuple[str, ...]] = []
    for f in data.get("figures", []):
        goal = (f.get("extra") or {}).get("goal")
        if not goal:
            continue
        limit = f.get("own_limit") or limits.get(f.get("limit") or "")
        limit_text = (f"{f['limit']} {number(limit['value'])} {limit['unit']}" if limit
                      else "-")
        verdict = met(f.get("value"), f.get("ratio"), goal)
        out.append((f"{f['suite']}: {f['name']}", f"{number(f.get('value'))} {f['unit']}",
                    limit_text, percent(f.get("ratio")), goal.get("text", ""),
                    {True: "yes", False: "NO", None: "-"}[verdict]))
    return out
