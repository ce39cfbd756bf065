"""The front door against slow clients, floods and label explosions, on the private stack:
NGINX cuts off a client that stalls its headers or body, answers 429 (never a 5xx) to an
address that floods the query API or opens too many connections, every answer forbids
content sniffing, and made-up methods and paths do not grow any service's ``/metrics``.

127.0.0.1 is exempt from the per-address limits (the benchmarks drive their load from it),
so the limited clients here bind other loopback addresses; the timeouts apply to everyone.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import string
from urllib.parse import urlsplit

import aiohttp
import orjson

from contracts.httpkit import KNOWN_METHODS
from tests.e2e.test_hostile_input import assert_error_shape
from tests.stack import Stack

CLIENT_TIMEOUT_S = 10  # routes.conf: client_header_timeout, client_body_timeout
CONN_LIMIT = 64  # infra/stack.py NGINX_CONN_LIMIT


def front_door(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.http_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def open_from(stack: Stack, local: str
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = front_door(stack)
    return await asyncio.open_connection(host, port, local_addr=(local, 0))


async def read_until_closed(reader: asyncio.StreamReader, deadline_s: float) -> bytes:
    """Everything NGINX sends until it closes the connection; fails after the deadline (a
    client NGINX never cut off)."""
    async def drain() -> bytes:
        got = b""
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got
    return await asyncio.wait_for(drain(), deadline_s)


async def test_a_client_that_stalls_its_body_or_its_headers_is_cut_off(stack: Stack) -> None:
    body_stalled = await open_from(stack, "127.0.0.4")
    body_stalled[1].write(b"POST /track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nContent-Length: 1000\r\n\r\n{\"page_id\": ")
    header_stalled = await open_from(stack, "127.0.0.4")
    header_stalled[1].write(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _, writer in (body_stalled, header_stalled):
        await writer.drain()
    deadline = CLIENT_TIMEOUT_S + 30  # generous: the machine is shared; never a timing check
    answers = await asyncio.gather(read_until_closed(body_stalled[0], deadline),
                                   read_until_closed(header_stalled[0], deadline))
    for answer in answers:  # closed, at most with a 408; never passed on to a service
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    for _, writer in (body_stalled, header_stalled):
        writer.close()


async def test_an_address_opening_too_many_connections_gets_429_for_the_rest(
        stack: Stack) -> None:
    request = (b"POST /track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 10\r\n\r\n")  # the body never comes: each request stays open
    held = []
    for _ in range(CONN_LIMIT + 16):
        reader, writer = await open_from(stack, "127.0.0.5")
        writer.write(request)
        await writer.drain()
        held.append((reader, writer))
    try:
        answers = await asyncio.gather(*(read_until_closed(r, CLIENT_TIMEOUT_S + 30)
                                         for r, _ in held))
    finally:
        for _, writer in held:
            writer.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
    assert len(refused) >= 16, [a[:40] for a in answers]
    head, _, body = refused[0].partition(b"\r\n\r\n")
    assert b"\r\nRetry-After: 1\r\n" in head + b"\r\n"
    assert_error_shape(orjson.loads(body))
    others = [a for a in answers if not a.startswith(b"HTTP/1.1 429")]
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in others), others[:3]


async def test_a_flood_of_queries_from_one_address_gets_429s_never_a_5xx(stack: Stack) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.6", 0), limit=20)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one() -> tuple[int, str, bytes]:
            async with client.get(f"{stack.http_url}/stats/realtime",
                                  params={"site_id": "flood"}) as response:
                return (response.status, response.headers.get("Retry-After", ""),
                        await response.read())

        results = await asyncio.gather(*(one() for _ in range(400)))
    statuses = {status for status, _, _ in results}
    assert 429 in statuses and all(status < 500 for status in statuses), statuses
    limited = [r for r in results if r[0] == 429]
    assert limited[0][1] == "1"
    assert orjson.loads(limited[0][2])["error"] == "rate_limited"
    assert_error_shape(orjson.loads(limited[0][2]))


async def test_every_answer_through_the_front_door_forbids_sniffing_once(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    url = stack.http_url
    requests = [("POST", "/track", b'{"page_id": "p", "user_id": "u"}'),  # 202, a gateway's
                ("POST", "/track", b"{"), ("GET", "/track", b""),  # 400, 405: a gateway's
                ("GET", "/stats/realtime", b""), ("GET", "/stats?limit=0", b""),  # the API's
                ("GET", "/nowhere", b""), ("GET", "/nginx-healthz", b""),
                ("POST", "/events", b" " * (1024 * 1024 + 10))]  # 413: NGINX's own
    statuses = set()
    for method, path, body in requests:
        async with http.request(method, url + path, data=io.BytesIO(body),
                                headers={"Content-Type": "application/json"}) as response:
            await response.read()
            statuses.add(response.status)
            assert response.headers.getall("X-Content-Type-Options") == ["nosniff"], (
                method, path, response.status)
    assert {200, 202, 400, 404, 405, 413} <= statuses, statuses


def junk(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=size))


async def metrics_size(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        return len(await response.read())


async def test_five_hundred_made_up_methods_and_paths_do_not_grow_any_metrics(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    """Each service directly, and through NGINX (which passes any method on)."""
    services = [*stack.gateway_urls, *stack.query_urls, *stack.aggregator_urls]
    before = {base: await metrics_size(http, base) for base in services}
    rng = random.Random(15)
    methods = ["PROPFIND", "MKCOL", "SEARCH", "PURGE", "REPORT", "LINK", "GET", "POST"]
    semaphore = asyncio.Semaphore(16)

    async def send(base: str, i: int) -> int:
        method = junk(rng, rng.randint(50, 1000)) if i % 5 == 0 else rng.choice(methods)
        path = "/" + junk(rng, rng.randint(50, 1000)).lower()
        async with semaphore, http.request(method, base + path) as response:
            await response.read()
            return response.status

    targets = [*services, stack.http_url]
    statuses = await asyncio.gather(*(send(targets[i % len(targets)], i) for i in range(500)))
    assert all(status < 500 for status in statuses), sorted(set(statuses))
    labels: set[str] = set()
    for base in services:  # a few new (route, method, status) lines at most
        grown = await metrics_size(http, base) - before[base]
        assert grown < 20_000, (base, grown)
        async with http.get(f"{base}/metrics") as response:
            labels |= set(re.findall(r'method="([^"]*)"', await response.text()))
    assert "OTHER" in labels  # every made-up method is counted under the one label
    assert labels <= KNOWN_METHODS | {"OTHER"}, labels - KNOWN_METHODS
