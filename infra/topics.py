"""Create the page-view and dead-letter topics when missing (idempotent).

    python infra/topics.py BOOTSTRAP [TOPIC] [PARTITIONS] [RETENTION_MS] [RETENTION_BYTES] [BROKERS]

Used by ``infra/stack.py`` after Kafka is ready, and by docker-compose's init container.
Retries while the broker is still electing its controller. The retention configs (time and
size, ``contracts.topics.TopicSpec.configs``) are applied when a topic is created; an existing
topic keeps its own (the README shows how to add the size bound to one). ``BROKERS`` (default
1) is the cluster's size: the topics get ``contracts.topics.Replication.for_brokers`` (three
copies and a min ISR of two on three brokers), and creation waits until that many brokers
have registered, since Kafka refuses a replication factor above the live brokers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from contracts.topics import (
    DEFAULT_PARTITIONS,
    DEFAULT_RETENTION_BYTES,
    DEFAULT_RETENTION_MS,
    Replication,
    TopicSpec,
    dead_letter_topic,
    page_views_topic,
)

TOPIC_ALREADY_EXISTS = 36  # Kafka's error code: another `up` created it first


class NotCreated(KafkaError):
    """The controller answered but refused a topic (a retry may succeed: brokers still
    registering, say)."""


def topic_specs(topic: str, partitions: int, retention_ms: int = DEFAULT_RETENTION_MS,
                retention_bytes: int = DEFAULT_RETENTION_BYTES, brokers: int = 1
                ) -> list[TopicSpec]:
    replication = Replication.for_brokers(brokers)
    return [page_views_topic(topic, partitions, retention_ms, retention_bytes, replication),
            dead_letter_topic(f"{topic}-dead-letters", replication)]


async def ensure_topics(bootstrap: str, topic: str, partitions: int,
                        retention_ms: int = DEFAULT_RETENTION_MS,
                        retention_bytes: int = DEFAULT_RETENTION_BYTES,
                        brokers: int = 1, timeout_s: float = 60.0) -> list[str]:
    specs = topic_specs(topic, partitions, retention_ms, retention_bytes, brokers)
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            registered = len((await admin.describe_cluster())["brokers"])
            if registered < specs[0].replication.replicas:
                raise NotCreated(f"{registered} of {brokers} brokers registered")
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                response = await admin.create_topics([
                    NewTopic(s.name, num_partitions=s.partitions,
                             replication_factor=s.replication.replicas,
                             topic_configs=s.configs())
                    for s in missing])
                refused = [(name, code) for name, code, *_ in response.topic_errors
                           if code not in (0, TOPIC_ALREADY_EXISTS)]
                if refused:
                    raise NotCreated(f"topics refused (name, Kafka error code): {refused}")
            return [s.name for s in missing]
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"topics: retrying after {exc!r}", file=sys.stderr)
            await asyncio.sleep(1)
        finally:
            await admin.close()


def main() -> None:
    bootstrap = sys.argv[1]
    topic = sys.argv[2] if len(sys.argv) > 2 else "page-views"
    partitions = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_PARTITIONS
    retention_ms = int(sys.argv[4]) if len(sys.argv) > 4 else DEFAULT_RETENTION_MS
    retention_bytes = int(sys.argv[5]) if len(sys.argv) > 5 else DEFAULT_RETENTION_BYTES
    brokers = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    created = asyncio.run(ensure_topics(bootstrap, topic, partitions, retention_ms,
                                        retention_bytes, brokers))
    print(f"topics: created {created}" if created else "topics: already present")


if __name__ == "__main__":
    main()
