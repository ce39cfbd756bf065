"""Create the page-view and dead-letter topics when missing (idempotent).

    python infra/topics.py BOOTSTRAP [TOPIC] [PARTITIONS] [RETENTION_MS] [RETENTION_BYTES]

Used by ``infra/stack.py`` after Kafka is ready, and by docker-compose's init container.
Retries while the broker is still electing its controller. The retention configs (time and
size, ``contracts.topics.TopicSpec.configs``) are applied when a topic is created; an existing
topic keeps its own (the README shows how to add the size bound to one).
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
    TopicSpec,
    dead_letter_topic,
    page_views_topic,
)


def topic_specs(topic: str, partitions: int, retention_ms: int = DEFAULT_RETENTION_MS,
                retention_bytes: int = DEFAULT_RETENTION_BYTES) -> list[TopicSpec]:
    return [page_views_topic(topic, partitions, retention_ms, retention_bytes),
            dead_letter_topic(f"{topic}-dead-letters")]


async def ensure_topics(bootstrap: str, topic: str, partitions: int,
                        retention_ms: int = DEFAULT_RETENTION_MS,
                        retention_bytes: int = DEFAULT_RETENTION_BYTES) -> list[str]:
    specs = topic_specs(topic, partitions, retention_ms, retention_bytes)
    deadline = time.monotonic() + 60
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                await admin.create_topics([
                    NewTopic(s.name, num_partitions=s.partitions, replication_factor=1,
                             topic_configs=s.configs())
                    for s in missing])
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
    created = asyncio.run(ensure_topics(bootstrap, topic, partitions, retention_ms,
                                        retention_bytes))
    print(f"topics: created {created}" if created else "topics: already present")


if __name__ == "__main__":
    main()
