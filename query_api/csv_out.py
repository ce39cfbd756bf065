"""CSV answers, so a spreadsheet or BI tool can read any stats URL directly.

A header row, then one row per item (pages, time buckets, compared metrics). Text cells
that a spreadsheet could run as a formula are prefixed with ``'`` (OWASP's advice; page ids
come from the public): those whose first character after any leading spaces is ``=``,
``+``, ``-``, ``@`` or their full-width (U+FF1D, U+FF0B, U+FF0D, U+FF20) or small (U+FE66,
U+FE62, U+FE63, U+FE6B) forms, which spreadsheets with an East Asian input method read as
the ASCII ones, and those with a tab, carriage return or line feed among their leading
blanks. Numbers are written as they are. Pure apart from building the response.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from aiohttp import web

FORMULA_CHARS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b")
LINE_CONTROLS = frozenset("\t\r\n")
Cell = str | int | float | None


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could evaluate this text (see the module docstring)."""
    rest = text.lstrip()  # every Unicode blank: spaces, no-break and ideographic spaces
    if LINE_CONTROLS.intersection(text[:len(text) - len(rest)]):
        return True
    return rest[:1] in FORMULA_CHARS


def safe_cell(value: Cell) -> Cell:
    if isinstance(value, str) and formula_like(value):
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
