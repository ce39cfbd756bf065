"""Query parameters and CSV rendering of the query API: pure functions, named cases."""

from __future__ import annotations

import csv
import io

import pytest

from query_api import params
from query_api.csv_out import safe_cell, to_csv
from query_api.mongo_reader import pieces_of


def test_limit_and_offset_have_defaults_and_bounds() -> None:
    assert params.limit_offset({}) == (100, 0)
    assert params.limit_offset({"limit": "10000", "offset": "5"}) == (10_000, 5)


@pytest.mark.parametrize(("query", "name"), [
    ({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"offset": "1.5"}, "offset"),
])
def test_bad_limits_name_the_parameter(query: dict[str, str], name: str) -> None:
    with pytest.raises(params.BadParameter) as caught:
        params.limit_offset(query)
    assert caught.value.name == name


def test_page_ids_follow_the_gateway_rules() -> None:
    assert params.page_id("/pricing") == "/pricing"
    assert params.page_id(None) is None
    for bad in ("", "x" * 513, "a\nb"):
        with pytest.raises(params.BadParameter):
            params.page_id(bad)


def test_csv_is_chosen_by_format_or_by_accept() -> None:
    assert params.output_format({}, "") == "json"
    assert params.output_format({}, "text/csv") == "csv"
    assert params.output_format({}, "text/csv;q=0.9, */*") == "csv"
    assert params.output_format({"format": "json"}, "text/csv") == "json"
    assert params.output_format({"format": "csv"}, "application/json") == "csv"
    with pytest.raises(params.BadParameter):
        params.output_format({"format": "xml"}, "")


def test_unknown_parameters_are_named() -> None:
    with pytest.raises(params.BadParameter) as caught:
        params.reject_unknown({"peroid": "7d"}, frozenset({"period"}))
    assert caught.value.name == "peroid"


def test_csv_has_a_header_row_and_one_row_per_item_and_parses_back() -> None:
    text = to_csv(("page_id", "views"), [{"page_id": "a,b \"quoted\"", "views": 3},
                                         {"page_id": "/x", "views": 0}])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [{"page_id": 'a,b "quoted"', "views": "3"}, {"page_id": "/x", "views": "0"}]


def test_csv_defuses_spreadsheet_formulas_in_text_but_not_numbers() -> None:
    text = to_csv(("page_id", "change"), [{"page_id": "=HYPERLINK(1)", "change": -5}])
    assert list(csv.reader(io.StringIO(text)))[1] == ["'=HYPERLINK(1)", "-5"]


@pytest.mark.parametrize("text", [
    "=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "\n=1", "\tplain", "\rplain",
    " =1", "   @x", "\u00a0=1", "\u3000=1", " \t x",
    "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20x", "  \uff1dcmd", "\ufe66x", "\ufe62x",
    "\ufe63x", "\ufe6bx",
])
def test_every_cell_a_spreadsheet_could_evaluate_is_prefixed_with_a_quote(text: str) -> None:
    assert safe_cell(text) == "'" + text
    assert list(csv.reader(io.StringIO(to_csv(("p",), [{"p": text}]))))[1] == ["'" + text]


@pytest.mark.parametrize("text", [
    "home", "/pricing", "a=b", "a-b", "x@y", "1+1", " home", "", "  ", "\uff41bc", "'=1",
])
def test_plain_text_is_written_as_it_is(text: str) -> None:
    assert safe_cell(text) == text


def test_missing_values_are_empty_cells() -> None:
    assert to_csv(("a", "b"), [{"a": 1, "b": None}]).splitlines()[1] == "1,"


def test_page_lists_for_mongo_are_cut_into_pieces_under_the_byte_bound_in_order() -> None:
    pages = ["a" * 100, "b" * 100, "c" * 100, "\U0001f600" * 50]  # the last: 200 bytes
    pieces = pieces_of(pages, max_bytes=250)
    assert pieces == [["a" * 100, "b" * 100], ["c" * 100], ["\U0001f600" * 50]]
    assert pieces_of([], max_bytes=250) == []
    assert pieces_of(["x" * 1000], max_bytes=250) == [["x" * 1000]]  # never split an id
