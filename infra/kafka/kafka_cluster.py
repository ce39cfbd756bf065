"""The shape of the local Kafka: one node (the default stack) or a cluster of up to three.

``infra/stack.py`` asks this module which nodes to run (``KAFKA_BROKERS``), what each one's
``server.properties`` says and how its storage is formatted; it starts and stops them. Pure
(no processes, no files), so the rendering is unit-tested without Java. The chaos suite runs
three nodes to prove that ``acks=all`` means something: SIGKILL a partition leader's node,
and no acknowledged record is lost while the other two keep ingesting.

Every node is a combined broker+controller: three nodes make a three-voter controller quorum,
so losing one keeps a majority. One node keeps today's dynamic quorum (KIP-853, formatted
with ``--standalone``). A cluster uses a *static* voter set (``controller.quorum.voters``,
formatted with no quorum flag, which Kafka 4.x's StorageTool accepts when the config names
the voters): every node knows the full set from its config, no directory ids need to be
generated and kept, and nodes format independently with one shared cluster id. The dynamic
alternative (``--initial-controllers 1@host:port:<directory id>,...``) would only matter for
adding or removing controllers later, which the local stack never does.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path

MAX_BROKERS = 3  # Ports reserves a broker and a controller port for three nodes
SINGLE_NODE_NAME = "kafka"  # the default stack's part, as before clusters existed


@dataclass(frozen=True)
class KafkaNode:
    """One node: its part name in the stack, KRaft node id, ports and data directory."""

    node_id: int
    name: str
    port: int
    controller_port: int
    data: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def voter(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.controller_port}"


def check_count(brokers: int) -> int:
    """``brokers`` when the local stack can run that many; a clear refusal otherwise."""
    if not 1 <= brokers <= MAX_BROKERS:
        raise ValueError(f"KAFKA_BROKERS={brokers}: the local stack runs 1 to {MAX_BROKERS} "
                         "Kafka brokers (ports are reserved for three)")
    return brokers


def cluster_nodes(brokers: int, ports: list[tuple[int, int]], data_root: Path
                  ) -> list[KafkaNode]:
    """The nodes to run: ``ports`` holds (broker, controller) for node 1, 2, 3. One node
    is the part ``kafka`` in ``data_root/kafka``; a cluster's are ``kafka-1`` … ``kafka-N``
    in ``data_root/kafka-<id>``, so switching between the two never shares a data dir."""
    check_count(brokers)
    if brokers == 1:
        port, controller = ports[0]
        return [KafkaNode(1, SINGLE_NODE_NAME, port, controller, data_root / SINGLE_NODE_NAME)]
    return [KafkaNode(i, f"kafka-{i}", port, controller, data_root / f"kafka-{i}")
            for i, (port, controller) in enumerate(ports[:brokers], start=1)]


def bootstrap(nodes: list[KafkaNode]) -> str:
    """What ``KAFKA_BOOTSTRAP`` names: every broker, so clients find the cluster whichever
    node is down."""
    return ",".join(node.address for node in nodes)


def quorum_line(nodes: list[KafkaNode]) -> str:
    if len(nodes) == 1:
        return f"controller.quorum.bootstrap.servers=127.0.0.1:{nodes[0].controller_port}"
    return "controller.quorum.voters=" + ",".join(node.voter for node in nodes)


def format_flags(nodes: list[KafkaNode]) -> list[str]:
    """The StorageTool's quorum flag: ``--standalone`` for the one dynamic voter; none for a
    static voter set (the StorageTool refuses ``--standalone`` when voters are configured)."""
    return ["--standalone"] if len(nodes) == 1 else []


def template_values(node: KafkaNode, nodes: list[KafkaNode], replicas: int, min_insync: int
                    ) -> dict[str, str]:
    """The ``@KEY@`` values of ``server.properties.in`` for ``node``. Internal topics get
    the page-view topic's ``replicas`` and ``min_insync`` (``contracts.topics.Replication``)."""
    return {"NODE_ID": str(node.node_id), "KAFKA_PORT": str(node.port),
            "CONTROLLER_PORT": str(node.controller_port), "DATA_DIR": str(node.data),
            "QUORUM": quorum_line(nodes), "REPLICAS": str(replicas),
            "MIN_ISR": str(min_insync)}


def heap_flags(nodes: list[KafkaNode]) -> list[str]:
    """One node keeps its 768 MiB ceiling; three share 2 cores and less memory each."""
    return ["-Xms256m", "-Xmx768m"] if len(nodes) == 1 else ["-Xms128m", "-Xmx512m"]


def new_cluster_id() -> str:
    """What ``StorageTool random-uuid`` prints (URL-safe base64 of 16 random bytes, never
    starting with '-'), without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
