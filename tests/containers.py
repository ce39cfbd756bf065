"""Kafka, MongoDB and Redis in containers (testcontainers), where a Docker engine answers.

The services and NGINX still run natively (``infra/stack.py up`` with the
``EXTERNAL_*`` variables), so the tests see the same processes as without Docker; only the
servers come from the official images, MongoDB itself instead of FerretDB.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack


def docker_engine_answers() -> bool:
    """An installed ``docker`` command proves nothing: only a ping of the engine does."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:  # no SDK, no socket, no permission: all mean "no engine here"
        return False
    return True


def start_servers() -> tuple[dict[str, str], Callable[[], None]]:
    """Start the three servers; their addresses as ``infra/stack.py``'s ``EXTERNAL_*``
    variables, and the function that removes the containers again."""
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.mongodb import MongoDbContainer
    from testcontainers.community.redis import RedisContainer

    containers = ExitStack()
    try:
        kafka = containers.enter_context(
            KafkaContainer("confluentinc/cp-kafka:8.0.0").with_kraft())  # Apache Kafka 4.0
        mongo = containers.enter_context(MongoDbContainer("mongo:8.0"))
        redis = containers.enter_context(RedisContainer("redis:7.4"))
        addresses = {
            "EXTERNAL_KAFKA_BOOTSTRAP": kafka.get_bootstrap_server(),
            "EXTERNAL_MONGO_URL": mongo.get_connection_url(),
            "EXTERNAL_REDIS_URL": f"redis://{redis.get_container_host_ip()}:"
                                  f"{redis.get_exposed_port(6379)}/0",
        }
    except BaseException:
        containers.close()
        raise
    return addresses, containers.close
