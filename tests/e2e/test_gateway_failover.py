"""Gateways dying or stopping lose no accepted event and cost clients nothing they can avoid.

- A gateway killed between requests costs no client a single retry: NGINX's connection to it
  fails before any byte of the request is sent, and ``proxy_next_upstream`` sends the request
  to another gateway.
- A gateway killed while requests are in flight costs only those requests a retry (NGINX never
  sends a POST that reached a gateway twice); the client retries with its event ids, and every
  event is in Kafka and counted exactly once.
- SIGTERM: the gateway refuses new connections, answers what is in flight only after Kafka
  acknowledged it, swallows nothing, and exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from tests.aggregator_harness import create_topic
from tests.gateway_process import GatewayProcess
from tests.kafka_tools import end_offsets, events_of_site, read_between
from tests.stack import Stack, eventually, port_taken, restore

NGINX_UNAVAILABLE = b"no backend could answer"  # NGINX's own 503 (infra/nginx/routes.conf)


def page_views(site_id: str, n: int, prefix: str = "/p") -> list[dict[str, str]]:
    return [{"page_id": f"{prefix}{i % 10}", "user_id": f"u{i % 50}", "site_id": site_id,
             "event_id": str(uuid.uuid4())} for i in range(n)]


@dataclass
class Delivery:
    """One event delivered by a well-behaved client, and what it cost."""

    event: dict[str, str]
    started: float  # time.monotonic() when the first attempt began
    failures: list[str] = field(default_factory=list)  # every failed attempt, as seen
    request_id: str = ""  # NGINX's X-Request-Id of the attempt that got the 202


async def deliver(http: aiohttp.ClientSession, url: str, event: dict[str, str],
                  attempts: int = 50) -> Delivery:
    """Post until 202, retrying 5xx and connection errors with the same event id."""
    delivery = Delivery(event, started=time.monotonic())
    for attempt in range(attempts):
        try:
            async with http.post(url, json=event) as response:
                body = await response.read()
                if response.status == 202:
                    delivery.request_id = response.headers["X-Request-Id"]
                    return delivery
                assert response.status >= 500, body
                delivery.failures.append(f"{response.status} {body[:160]!r}")
        except aiohttp.ClientError as exc:
            delivery.failures.append(repr(exc))
        await asyncio.sleep(0.05 * (attempt + 1))  # the client's back-off between retries
    raise AssertionError(f"{event['event_id']} never accepted: {delivery.failures}")


def address_of(stack: Stack, gateway: str) -> str:
    """``gateway-2`` -> ``127.0.0.1:<its port>``, as NGINX logs its upstreams."""
    return urlsplit(stack.gateway_urls[int(gateway.split("-")[1]) - 1]).netloc


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not yet reaped


async def kill_gateway(stack: Stack, gateway: str) -> float:
    """SIGKILL a stack gateway and wait until it is gone and its port refuses connections;
    returns that moment (``time.monotonic()``)."""
    pid = stack.signal_part(gateway, signal.SIGKILL)
    port = int(address_of(stack, gateway).rsplit(":", 1)[1])
    await eventually(lambda: asyncio.sleep(0, process_gone(pid) and not port_taken(port)),
                     timeout_s=10, message=f"{gateway} dead")
    return time.monotonic()


def access_log(stack: Stack) -> dict[str, dict[str, Any]]:
    """NGINX's access log of the private stack, by request id."""
    entries: dict[str, dict[str, Any]] = {}
    for line in (stack.directory / "logs" / "nginx-access.log").read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        entries[entry["request_id"]] = entry
    return entries


async def logged(stack: Stack, deliveries: Iterable[Delivery]) -> dict[str, dict[str, Any]]:
    """The access log entries of these deliveries' accepted attempts (NGINX flushes its log
    every second: wait until all are there)."""
    wanted = {d.request_id for d in deliveries}
    found: dict[str, dict[str, Any]] = {}

    async def all_logged() -> bool:
        nonlocal found
        found = {k: v for k, v in access_log(stack).items() if k in wanted}
        return len(found) == len(wanted)

    await eventually(all_logged, timeout_s=10, interval_s=0.2, message="requests logged")
    return found


def failed_over_from(entries: Iterable[dict[str, Any]], dead: str) -> list[dict[str, Any]]:
    """Requests that NGINX first tried on the ``dead`` gateway, then answered from another."""
    return [e for e in entries if e["upstream"].startswith(f"{dead}, ")]


async def assert_exactly_in_kafka_and_counted(
        stack: Stack, http: aiohttp.ClientSession, start: Any, site_id: str,
        events: list[dict[str, str]]) -> None:
    """Kafka holds exactly the sent ids for the site (a retried one may be there twice, as
    the client reused its id), and /stats counts each event once, not one more."""
    published = events_of_site(await read_between(stack.kafka_bootstrap, start), site_id)
    assert {e.event_id for e in published} == {e["event_id"] for e in events}

    async def total_views() -> int:
        async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
            return int((await r.json())["total_views"])

    async def counted_once() -> bool:
        return await total_views() == len(events)

    await eventually(counted_once, timeout_s=60, message="every event counted once")
    assert await total_views() == len(events)  # and no more, a moment later


async def test_a_gateway_killed_between_requests_costs_clients_not_one_retry(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    dead = address_of(stack, "gateway-2")
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    warm = [await deliver(http, f"{stack.http_url}/track", e)
            for e in page_views(site_id, 30, "/warm")]
    assert [d.failures for d in warm if d.failures] == []
    # NGINX sent some of these to gateway-2, so it holds idle keep-alive connections to it.
    assert dead in {e["upstream"] for e in (await logged(stack, warm)).values()}

    sent: list[Delivery] = []
    try:
        await kill_gateway(stack, "gateway-2")  # no request is in flight now
        deadline = time.monotonic() + 60
        failovers: list[dict[str, Any]] = []
        # NGINX skips a failed gateway for 2 s (fail_timeout), then tries it again: send
        # rounds of sequential and concurrent requests until it has failed over a few times.
        while len(failovers) < 3:
            assert time.monotonic() < deadline, f"only {len(failovers)} fail-overs"
            for event in page_views(site_id, 20, "/seq"):
                sent.append(await deliver(http, f"{stack.http_url}/track", event))
            sent += await asyncio.gather(*(deliver(http, f"{stack.http_url}/track", e)
                                           for e in page_views(site_id, 40, "/conc")))
            # Every request got its 202 on the first try, those NGINX first tried on the
            # dead gateway included.
            assert [(d.event["event_id"], d.failures) for d in sent if d.failures] == []
            ours = {d.request_id for d in sent}
            failovers = [e for e in failed_over_from(access_log(stack).values(), dead)
                         if e["request_id"] in ours]
    finally:
        restore()

    assert {e["upstream_status"] for e in failovers} == {"502, 202"}
    await assert_exactly_in_kafka_and_counted(stack, http, start, site_id,
                                              [d.event for d in warm + sent])


async def test_a_gateway_killed_under_load_costs_only_its_requests_in_flight_a_retry(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    dead = address_of(stack, "gateway-2")
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    events = page_views(site_id, 1500)
    semaphore = asyncio.Semaphore(24)
    deliveries: list[Delivery] = []

    async def send(event: dict[str, str]) -> None:
        async with semaphore:
            deliveries.append(await deliver(http, f"{stack.http_url}/track", event))

    try:
        tasks = [asyncio.create_task(send(e)) for e in events]
        await eventually(lambda: asyncio.sleep(0, len(deliveries) > 300), timeout_s=30)
        dead_at = await kill_gateway(stack, "gateway-2")
        await asyncio.gather(*tasks)
    finally:
        restore()

    # Requests that began once gateway-2 was gone cost nothing: NGINX skipped it or failed
    # over (the test above shows the fail-over itself).
    later = [d for d in deliveries if d.started > dead_at]
    assert len(later) > 500
    assert [(d.event["event_id"], d.failures) for d in later if d.failures] == []
    assert dead not in {e["upstream"] for e in (await logged(stack, later)).values()}
    # Only requests in flight at the kill (they may have reached gateway-2) were retried,
    # after NGINX's 503: NGINX never sends a POST that reached a gateway to another.
    retried = [d for d in deliveries if d.failures]
    assert all(d.started <= dead_at for d in retried)
    assert all(NGINX_UNAVAILABLE in f.encode() for d in retried for f in d.failures), retried
    assert len(retried) <= 24  # at most one per concurrent request in flight
    await assert_exactly_in_kafka_and_counted(stack, http, start, site_id, events)


@dataclass
class Outcome:
    """One request to the draining gateway: what the client saw, and when."""

    event_id: str
    started: float
    ended: float
    kind: str  # "accepted" (202), "refused" (connection refused), or anything else seen


# A connection the gateway never accepted: refused once its listener is closed, or reset when
# the listener closed while the connection still waited in its backlog (it never reached
# aiohttp either way).
NOT_ACCEPTED = (errno.ECONNREFUSED, errno.ECONNRESET)


async def post_once(session: aiohttp.ClientSession, url: str, site_id: str) -> Outcome:
    event = {"page_id": "/drain", "user_id": f"u{uuid.uuid4().hex[:6]}", "site_id": site_id,
             "event_id": str(uuid.uuid4())}
    started = time.monotonic()
    try:
        async with session.post(f"{url}/events", json=[event]) as response:
            body = await response.read()
            kind = "accepted" if response.status == 202 else f"{response.status} {body[:160]!r}"
    except aiohttp.ClientConnectorError as exc:
        refused = exc.os_error.errno in NOT_ACCEPTED
        kind = "refused" if refused else f"connect failed: {exc!r}"
    except aiohttp.ClientError as exc:  # the connection was cut before an answer
        kind = f"cut: {exc!r}"
    return Outcome(event["event_id"], started, time.monotonic(), kind)


async def first_refusal(port: int, deadline_s: float = 10.0) -> float:
    """Open connections until one is refused; returns when (``time.monotonic()``)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            if exc.errno in NOT_ACCEPTED:
                return time.monotonic()
            raise
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.002)
    raise AssertionError(f"port {port} still accepts connections {deadline_s}s after SIGTERM")


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, tmp_path: Path) -> None:
    # Kafka acknowledges a batch only after it lingered 1 s, so requests are in flight
    # (waiting for that acknowledgement) at the SIGTERM. One partition: every request joins
    # the same batch, so the clients send in waves, one a second.
    topic = await create_topic(stack, partitions=1)
    gateway = GatewayProcess(stack, 0, tmp_path / "gateway.log",
                             env={"KAFKA_LINGER_MS": "1000", "KAFKA_TOPIC": topic.name})
    outcomes: list[Outcome] = []
    workers: list[asyncio.Task[None]] = []
    # A fresh connection for every request, so a refused connection is told apart from a
    # request that reached the gateway.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            await gateway.start(http)
            start = await end_offsets(stack.kafka_bootstrap, topic.name)
            stop_at = time.monotonic() + 60

            in_flight_since: dict[int, float] = {}  # client -> start of its request

            async def client(n: int) -> None:  # sends until refused three times
                refusals = 0
                while refusals < 3 and time.monotonic() < stop_at:
                    in_flight_since[n] = time.monotonic()
                    outcome = await post_once(session, gateway.url, site_id)
                    del in_flight_since[n]
                    outcomes.append(outcome)
                    refusals += outcome.kind == "refused"

            workers = [asyncio.create_task(client(n)) for n in range(16)]
            await eventually(lambda: asyncio.sleep(0, sum(
                o.kind == "accepted" for o in outcomes) >= 32), timeout_s=30)

            def wave_in_flight() -> bool:
                """Every client has a request in flight, sent 0.15 to 0.4 s ago: the gateway
                has read them, and their batches are still lingering for most of a
                second, waiting for Kafka's acknowledgement."""
                if len(in_flight_since) < len(workers):
                    return False
                now = time.monotonic()
                starts = in_flight_since.values()
                return now - max(starts) >= 0.15 and now - min(starts) <= 0.4

            await eventually(lambda: asyncio.sleep(0, wave_in_flight()), timeout_s=30,
                             interval_s=0.005,
                             message="a wave of requests in flight, waiting for Kafka")
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            refused_at = await first_refusal(gateway.port)
            await asyncio.gather(*workers)
            returncode = await gateway.wait()
        finally:
            for worker in workers:
                worker.cancel()
            await gateway.kill()

    assert returncode == 0, gateway.log_tail()
    assert gateway.troubles() == []  # no error, exception or stray text in its log
    published = [e.event_id for e in events_of_site(
        await read_between(stack.kafka_bootstrap, start), site_id)]
    accepted_ids = {o.event_id for o in outcomes if o.kind == "accepted"}
    # Every 202 is in Kafka, and Kafka holds nothing the client did not get a 202 for (a
    # request cut without an answer after reaching the gateway would show up there).
    assert len(published) == len(set(published))  # each once: nothing was sent twice
    missing, unanswered = accepted_ids - set(published), set(published) - accepted_ids
    assert (missing, unanswered) == (set(), set())
    # Every request got a 202 or a refused connection. The one other outcome allowed: a
    # connection cut without an answer once shutdown began, whose request the gateway had not
    # begun to handle (aiohttp closes connections with no request in progress when shutdown
    # begins; the request was still on its way): its event is not in Kafka (above), so the
    # client's retry with the same event id is safe.
    cut = [o for o in outcomes if o.kind not in ("accepted", "refused")]
    assert [o for o in cut if o.ended <= sigterm_at or not o.kind.startswith("cut")] == []
    # The requests the gateway was handling at the SIGTERM were answered 202, after new
    # connections were already refused.
    handling = [o for o in outcomes if o.started + 0.15 <= sigterm_at < o.ended]
    assert len(handling) >= 8, handling
    assert {o.kind for o in handling} == {"accepted"}, handling
    assert all(o.ended > refused_at for o in handling), (refused_at, handling)
    # Once refused, always refused: no connection opened later got through.
    assert {o.kind for o in outcomes if o.started > refused_at} == {"refused"}
