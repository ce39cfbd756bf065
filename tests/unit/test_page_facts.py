"""Page facts: the packed value of a page's field, its hash group and the visitor element."""

from __future__ import annotations

import random
import string

import pytest

from contracts.page_facts import (
    ELEMENT_CHARS,
    GROUPS,
    INLINE_MAX,
    group_of,
    pack,
    unpack,
    views_of,
    visitor_element,
)


def test_a_value_unpacks_to_what_was_packed() -> None:
    elements = [visitor_element(f"u{i}") for i in range(INLINE_MAX)]
    for n in range(INLINE_MAX + 1):
        value = pack(12, elements[:n])
        assert unpack(value) == (12, tuple(elements[:n]))
        assert views_of(value) == 12
    assert unpack(pack(7, None)) == (7, None) and views_of(pack(7, None)) == 7
    assert pack(3, ["AbCdEfGh", "-_012345"]) == "3:AbCdEfGh-_012345"
    assert pack(3, None) == "3!"


def test_a_full_inline_value_stays_within_the_compact_hash_encoding() -> None:
    """Redis keeps a hash compact (listpack) while every value is at most 64 bytes."""
    full = pack(9_999_999, [visitor_element(f"u{i}") for i in range(INLINE_MAX)])
    assert len(full.encode()) <= 64


def test_visitor_elements_are_fixed_width_printable_and_never_the_marks() -> None:
    rng = random.Random(3)
    ids = {"", "é", "a" * 300, *("".join(rng.choices(string.printable, k=rng.randrange(1, 40)))
                                   for _ in range(2000))}
    elements = {visitor_element(i) for i in ids}
    assert len(elements) == len(ids)  # 48 bits: no collision among a few thousand
    allowed = set(string.ascii_letters + string.digits + "-_")
    for e in elements:
        assert len(e) == ELEMENT_CHARS and set(e) <= allowed  # no ':' or '!'
    assert visitor_element("u1") == visitor_element("u1") != visitor_element("u2")


@pytest.mark.parametrize("unit", list(GROUPS))
def test_pages_spread_over_their_buckets_groups(unit: str | None) -> None:
    groups = [group_of(f"/p{i}", unit) for i in range(20_000)]
    assert set(groups) == set(range(GROUPS[unit]))
    biggest = max(groups.count(g) for g in set(groups))
    assert biggest <= 1.3 * 20_000 / GROUPS[unit]  # about even: ~310 a hash at 64
