"""The topics are bounded in time and in size, so raw events (visitor ids among them) are
never kept without limit, whether traffic is quiet or a flood."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from contracts.topics import (
    DEAD_LETTER_RETENTION_BYTES,
    DEFAULT_RETENTION_BYTES,
    DEFAULT_RETENTION_MS,
    dead_letter_topic,
    page_views_topic,
)

ROOT = Path(__file__).resolve().parents[2]


def load_topics_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infra_topics", ROOT / "infra" / "topics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_page_view_topic_has_a_time_and_a_size_bound_by_default() -> None:
    assert page_views_topic().configs() == {
        "retention.ms": str(DEFAULT_RETENTION_MS), "retention.bytes": str(DEFAULT_RETENTION_BYTES)}
    assert 0 < DEFAULT_RETENTION_BYTES <= 8 * 1024 ** 3


def test_the_dead_letter_topic_is_bounded_too() -> None:
    configs = dead_letter_topic().configs()
    assert configs["retention.bytes"] == str(DEAD_LETTER_RETENTION_BYTES)
    assert int(configs["retention.ms"]) > 0


def test_the_topic_script_creates_both_topics_with_the_given_bounds() -> None:
    specs = load_topics_script().topic_specs("views", 3, retention_ms=60_000,
                                             retention_bytes=1_000_000)
    assert [(s.name, s.partitions) for s in specs] == [("views", 3), ("views-dead-letters", 1)]
    assert specs[0].configs() == {"retention.ms": "60000", "retention.bytes": "1000000"}
    assert all(int(s.configs()["retention.bytes"]) > 0 for s in specs)


def test_on_three_brokers_both_topics_keep_three_copies_and_acks_need_two() -> None:
    specs = load_topics_script().topic_specs("views", 6, brokers=3)
    assert [s.replication.replicas for s in specs] == [3, 3]
    assert [s.configs()["min.insync.replicas"] for s in specs] == ["2", "2"]


def test_on_one_broker_the_topics_set_no_in_sync_minimum() -> None:
    specs = load_topics_script().topic_specs("views", 6)
    assert [s.replication.replicas for s in specs] == [1, 1]
    assert not any("min.insync.replicas" in s.configs() for s in specs)
