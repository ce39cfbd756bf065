"""CSV answers, so a spreadsheet or BI tool can read any stats URL directly.

A header row, then one row per item (pages, time buckets, compared metrics). Text cells
that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return; page ids come from the public) are prefixed with ``'`` (OWASP's advice);
numbers are written as they are. Pure apart from building the response.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from aiohttp import web

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
Cell = str | int | float | None


def safe_cell(value: Cell) -> Cell:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else safe_cell(row.get(c)) for c in columns])
    return out.getvalue()


def csv_response(columns: Sequence[str], rows: Iterable[Mapping[str, Cell]],
                 headers: dict[str, str], filename: str) -> web.Response:
    return web.Response(
        text=to_csv(columns, rows), content_type="text/csv", charset="utf-8",
        headers={**headers, "Content-Disposition": f'inline; filename="{filename}.csv"'})
