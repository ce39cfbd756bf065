"""Which client ``REDIS_URL`` gives the services: one server, or a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from contracts.redis_client import cluster_startup, connect_redis_client


async def test_a_redis_url_gives_a_client_of_one_server() -> None:
    client = connect_redis_client("redis://127.0.0.1:16379/0")
    assert isinstance(client, Redis)
    await client.aclose()


async def test_a_cluster_url_gives_a_cluster_client_seeded_with_every_node_named() -> None:
    client = connect_redis_client("redis+cluster://u:p%40ss@10.0.0.1:7001,10.0.0.2:7002",
                                  timeout_s=3.0)
    assert isinstance(client, RedisCluster)
    assert sorted(n.name for n in client.nodes_manager.startup_nodes.values()) == [
        "10.0.0.1:7001", "10.0.0.2:7002"]
    assert client.connection_kwargs["password"] == "p@ss"
    assert client.connection_kwargs["username"] == "u"
    assert client.connection_kwargs["socket_timeout"] == 3.0
    await client.aclose()


def test_the_blocking_callers_read_the_same_nodes_and_credentials_from_a_cluster_url() -> None:
    assert cluster_startup("redis://127.0.0.1:16379/0") is None
    assert cluster_startup("redis+cluster://u:p%40ss@10.0.0.1:7001,:7002,10.0.0.3") == (
        [("10.0.0.1", 7001), ("127.0.0.1", 7002), ("10.0.0.3", 6379)], "u", "p@ss")
