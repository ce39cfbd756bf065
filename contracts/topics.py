"""Kafka topic names and their shape, shared by the gateway, the aggregator and the replay."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int


PAGE_VIEWS_TOPIC = "page-views"
DEAD_LETTER_TOPIC = "page-views-dead-letters"
AGGREGATOR_GROUP = "pageview-aggregators"

DEFAULT_PARTITIONS = 6
# Replay reads the topic from the beginning, so the local stack keeps records for 30 days.
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000


def page_views_topic(name: str = PAGE_VIEWS_TOPIC, partitions: int = DEFAULT_PARTITIONS,
                     retention_ms: int = DEFAULT_RETENTION_MS) -> TopicSpec:
    return TopicSpec(name=name, partitions=partitions, retention_ms=retention_ms)


def dead_letter_topic(name: str = DEAD_LETTER_TOPIC) -> TopicSpec:
    return TopicSpec(name=name, partitions=1, retention_ms=DEFAULT_RETENTION_MS)
