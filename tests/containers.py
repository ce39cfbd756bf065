"""Kafka, MongoDB and Redis in containers (testcontainers), where a Docker engine answers.

The services and NGINX still run natively (``infra/stack.py up`` with the
``EXTERNAL_*`` variables), so the tests see the same processes as without Docker; only the
servers come from the official images, MongoDB itself instead of FerretDB.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import ExitStack
from urllib.parse import urlsplit


def docker_engine_answers() -> bool:
    """An installed ``docker`` command proves nothing: only the engine answering ``/_ping``
    does. Asked over a plain socket, closed on every path: the Docker SDK leaks its socket
    when the engine is missing, and the test session treats that warning as an error."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(host.removeprefix("unix://"))
                return _pinged(sock)
        address = urlsplit(host)
        if address.scheme != "tcp" or address.hostname is None:
            return False
        with socket.create_connection((address.hostname, address.port or 2375), 2) as sock:
            return _pinged(sock)
    except OSError:
        return False


def _pinged(sock: socket.socket) -> bool:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    reply = sock.recv(1024)
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


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
