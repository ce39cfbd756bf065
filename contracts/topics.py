"""Kafka topic names and their shape, shared by the gateway, the aggregator and the replay."""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPLICAS = 3


@dataclass(frozen=True, slots=True)
class Replication:
    """How many copies of each partition a cluster keeps, and how many of them must hold a
    record before an ``acks=all`` producer (the gateway) is told it is stored."""

    replicas: int = 1
    min_insync: int = 1

    @classmethod
    def for_brokers(cls, brokers: int) -> Replication:
        """Three copies at most. With three, two in sync: losing one broker neither stops
        ingestion nor loses an acknowledged record. With two, one: a min ISR of two would
        stop every write as soon as either broker is down."""
        if brokers < 1:
            raise ValueError(f"a Kafka cluster has at least one broker, not {brokers}")
        replicas = min(MAX_REPLICAS, brokers)
        return cls(replicas=replicas, min_insync=2 if replicas >= 3 else 1)


SINGLE_BROKER = Replication()


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    retention_bytes: int  # per partition (Kafka's unit); -1: no size bound
    replication: Replication = SINGLE_BROKER

    def configs(self) -> dict[str, str]:
        """The topic configs this project sets: a time and a size bound, so neither a long
        quiet period nor a flood keeps records (raw visitor data) without limit; on a
        cluster also the in-sync copies an acknowledged write needs."""
        configs = {"retention.ms": str(self.retention_ms),
                   "retention.bytes": str(self.retention_bytes)}
        if self.replication.min_insync > 1:
            configs["min.insync.replicas"] = str(self.replication.min_insync)
        return configs


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
                     retention_bytes: int = DEFAULT_RETENTION_BYTES,
                     replication: Replication = SINGLE_BROKER) -> TopicSpec:
    return TopicSpec(name=name, partitions=partitions, retention_ms=retention_ms,
                     retention_bytes=retention_bytes, replication=replication)


def dead_letter_topic(name: str = DEAD_LETTER_TOPIC,
                      replication: Replication = SINGLE_BROKER) -> TopicSpec:
    return TopicSpec(name=name, partitions=1, retention_ms=DEFAULT_RETENTION_MS,
                     retention_bytes=DEAD_LETTER_RETENTION_BYTES, replication=replication)
