"""Per-master copies of a marker: names in their own hash tag, the marker's own suffix."""

from __future__ import annotations

from redis.crc import key_slot

from contracts.keys import intact_key
from contracts.markers import master_copy


def test_a_copy_keeps_the_markers_name_under_a_tag_of_its_own() -> None:
    name = intact_key()
    assert master_copy(name, 7) == name.replace("{!meta}", "{!m7}")
    slots = {key_slot(master_copy(name, n).encode()) for n in range(50)}
    assert len(slots) > 40  # candidates spread over the slots: every master gets one soon
