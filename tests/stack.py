"""Finding (or starting) the real local stack for integration and end-to-end tests.

Order of preference: service URLs from the environment; the stack described by
``.run/stack.env`` when it answers; otherwise ``infra/stack.py up`` starts it (and the
session stops it again at the end), with Kafka, MongoDB and Redis in containers where a Docker
engine answers (``tests/containers.py``). Failure tests use ``stop_part``/``restore`` to kill or
stop a real part and bring it back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest
from redis import Redis as SyncRedis

from contracts.keys import intact_key
from tests.containers import docker_engine_answers, start_servers

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / ".run" / "stack.env"
T = TypeVar("T")


@dataclass(frozen=True)
class Stack:
    http_url: str
    kafka_bootstrap: str
    topic: str
    dead_letter_topic: str
    mongo_url: str
    redis_url: str
    gateway_urls: tuple[str, ...]
    query_urls: tuple[str, ...]
    aggregator_urls: tuple[str, ...]

    @classmethod
    def from_mapping(cls, env: dict[str, str]) -> Stack:
        def urls(name: str) -> tuple[str, ...]:
            return tuple(u for u in env.get(name, "").split(",") if u)
        return cls(http_url=env["HTTP_URL"], kafka_bootstrap=env["KAFKA_BOOTSTRAP"],
                   topic=env.get("KAFKA_TOPIC", "page-views"),
                   dead_letter_topic=env.get("KAFKA_DEAD_LETTER_TOPIC",
                                             "page-views-dead-letters"),
                   mongo_url=env["MONGO_URL"], redis_url=env["REDIS_URL"],
                   gateway_urls=urls("GATEWAY_URLS"), query_urls=urls("QUERY_URLS"),
                   aggregator_urls=urls("AGGREGATOR_URLS"))

    def env(self) -> dict[str, str]:
        return {"HTTP_URL": self.http_url, "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "KAFKA_TOPIC": self.topic, "MONGO_URL": self.mongo_url,
                "REDIS_URL": self.redis_url}


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def load_native_stack() -> ModuleType:
    """``infra/stack.py`` as a module, executed afresh (it reads its settings at import)."""
    spec = importlib.util.spec_from_file_location("native_stack", ROOT / "infra" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def stack_cli(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "infra" / "stack.py"), *args], check=True,
                   cwd=ROOT)


def find_or_start() -> tuple[Stack, Callable[[], None] | None]:
    """The stack to test against, and how to take it down again if this session started it."""
    if "HTTP_URL" in os.environ and "KAFKA_BOOTSTRAP" in os.environ:
        return Stack.from_mapping(dict(os.environ)), None
    if STACK_ENV.exists():
        stack = Stack.from_mapping(read_env_file(STACK_ENV))
        if answers(f"{stack.http_url}/nginx-healthz"):
            stack_cli("up")  # idempotent: brings back any part that died
            return stack, None
    remove_containers = None
    if docker_engine_answers():
        addresses, remove_containers = start_servers()
        os.environ.update(addresses)  # every later `infra/stack.py up` (restore) uses them

    def take_down() -> None:
        try:
            stack_cli("down")
        finally:
            if remove_containers is not None:
                remove_containers()

    try:
        stack_cli("up")
    except BaseException:
        take_down()
        raise
    return Stack.from_mapping(read_env_file(STACK_ENV)), take_down


def wait_until_aggregates_intact(stack: Stack, timeout_s: float = 300.0) -> None:
    """Redis answers only once the aggregators marked it intact (a first start, or a Redis
    that lost its state, rebuilds from the topic first)."""
    client = SyncRedis.from_url(stack.redis_url)
    try:
        poll_until(lambda: client.exists(intact_key()), timeout_s=timeout_s, interval_s=0.2,
                   message="Redis aggregates rebuilt and marked intact")
    finally:
        client.close()


def restore() -> None:
    """Start whatever part of the local stack is not running (after a failure test)."""
    stack_cli("up")


def stop_part(name: str) -> None:
    if os.environ.get(load_native_stack().EXTERNAL_VARIABLES.get(name, "")):
        pytest.skip(f"{name} runs in a container here; this failure test stops the native one")
    stack_cli("stop", name)


def poll_until(check: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.05,
               message: str = "condition") -> T:
    """Call ``check`` until it returns something truthy; fail with the last value after the
    deadline. Tests wait for conditions this way, never with fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout_s}s; last value: {last!r}")
        time.sleep(interval_s)
        last = check()
    return last


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 20.0,
                     interval_s: float = 0.05, message: str = "condition") -> T:
    """Async ``poll_until``: await ``check`` until truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last = await check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout_s}s; last value: {last!r}")
        await asyncio.sleep(interval_s)
        last = await check()
    return last
