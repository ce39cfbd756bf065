"""Kafka topic names and their shape, shared by the gateway, the aggregator and the replay."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    retention_bytes: int  # per partition (Kafka's unit); -1: no size bound

    def configs(self) -> dict[str, str]:
        """The topic configs this project sets: a time and a size bound, so neither a long
        quiet period nor a flood keeps records (raw visitor data) without limit."""
        return {"retention.ms": str(self.retention_ms),
                "retention.bytes": str(self.retention_bytes)}


PAGE_VIEWS_TOPIC = "page-views"
DEAD_LETTER_TOPIC = "page-views-dead-letters"
AGGREGATOR_GROUP = "pageview-aggregators"

DEFAULT_PARTITIONS = 6
# Replay reads the topic from the beginning, so the local stack keeps records for 30 days.
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
# And at most 1 GiB per partition (6 GiB for 6 partitions, ~6 million records each at about
# 160 B a record): a flood cannot fill the disk; older history stays in MongoDB.
DEFAULT_RETENTION_BYTES = 1024 ** 3
DEAD_LETTER_RETENTION_BYTES = 256 * 1024 ** 2


def page_views_topic(name: str = PAGE_VIEWS_TOPIC, partitions: int = DEFAULT_PARTITIONS,
                     retention_ms: int = DEFAULT_RETENTION_MS,
                     retention_bytes: int = DEFAULT_RETENTION_BYTES) -> TopicSpec:
    return TopicSpec(name=name, partitions=partitions, retention_ms=retention_ms,
                     retention_bytes=retention_bytes)


def dead_letter_topic(name: str = DEAD_LETTER_TOPIC) -> TopicSpec:
    return TopicSpec(name=name, partitions=1, retention_ms=DEFAULT_RETENTION_MS,
                     retention_bytes=DEAD_LETTER_RETENTION_BYTES)
