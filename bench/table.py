"""The plain-text (and Markdown) table a run prints at the end.

Pure formatting of the JSON a run writes, so the printed table and the README table are
the same function of the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

HEADERS = ("suite", "measurement", "result", "p50 ms", "p99 ms", "p99.9 ms", "errors",
           "limit", "ratio")


def number(value: float | None, digits: int = 0) -> str:
    """Thousands separators, a fixed number of decimals; '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0 and abs(value) < 10 and value != int(value):
        digits = 1
    return f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def rows(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per figure of a results JSON document."""
    limits = data.get("limits", {})
    out: list[tuple[str, ...]] = []
    for f in data.get("figures", []):
        lat = f.get("latency") or {}
        limit = f.get("own_limit") or limits.get(f.get("limit") or "")
        limit_text = (f"{f['limit']} {number(limit['value'])} {limit['unit']}" if limit
                      else "-")
        out.append((f["suite"], f["name"], f"{number(f['value'])} {f['unit']}",
                    number(lat.get("p50_ms"), 1), number(lat.get("p99_ms"), 1),
                    number(lat.get("p999_ms"), 1), str(f.get("errors", 0)), limit_text,
                    percent(f.get("ratio"))))
    return out


def render(table: Sequence[Sequence[str]], headers: Sequence[str] = HEADERS) -> str:
    """A fixed-width text table for the terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *table, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def markdown(table: Sequence[Sequence[str]], headers: Sequence[str] = HEADERS) -> str:
    """The same table as GitHub Markdown, for the README."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
    return "\n".join(lines)
