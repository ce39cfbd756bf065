"""Hostile and malformed input through NGINX: only clear 4xx answers, gateways stay healthy,
and the per-client rate limit answers 429."""

from __future__ import annotations

import asyncio
import gzip
import io
import random
from typing import Any

import aiohttp
import orjson

from tests.stack import Stack

JSON = "application/json"


def malformed_requests(rng: random.Random) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """At least 200 (method, path, body, headers) that must all be refused with a 4xx."""
    cases: list[tuple[str, str, bytes, dict[str, str]]] = []
    good = {"page_id": "p", "user_id": "u"}
    for _ in range(120):  # random bytes, truncated JSON, invalid UTF-8
        body = rng.choice([
            rng.randbytes(rng.randint(1, 300)),
            orjson.dumps(good)[: rng.randint(1, 20)],
            b'{"page_id": "\xff\xfe", "user_id": "u"}',
        ])
        cases.append(("POST", rng.choice(["/track", "/events"]), body, {"Content-Type": JSON}))
    bad_events: list[object] = [
        {}, [], None, 1, "s", {"page_id": None, "user_id": "u"}, {"page_id": "p"},
        {"page_id": "p" * 513, "user_id": "u"}, {"page_id": "p", "user_id": "u" * 129},
        {"page_id": "p\u0000", "user_id": "u"}, {"page_id": "p", "user_id": "u", "site_id": "../x"},
        {"page_id": "p", "user_id": "u", "ts": "2099-01-01T00:00:00Z"},
        {"page_id": "p", "user_id": "u", "ts": -5}, {"page_id": "p", "user_id": "u", "ts": 1e300},
        {"page_id": ["p"], "user_id": {"u": 1}}, {"page_id": "p", "user_id": "u", "extra": 1},
    ]
    for event in bad_events:
        cases.append(("POST", "/track", orjson.dumps(event), {"Content-Type": JSON}))
        cases.append(("POST", "/events", orjson.dumps([good, event]), {"Content-Type": JSON}))
    deep = b"[" * 100_000 + b"]" * 100_000
    cases += [("POST", "/events", deep, {"Content-Type": JSON})] * 3
    cases += [("POST", "/events", orjson.dumps([good] * 1001), {"Content-Type": JSON})] * 3
    cases += [("POST", "/events", b" " * (1024 * 1024 + 10), {"Content-Type": JSON})] * 3
    bomb = gzip.compress(b"[" + b" " * (32 * 1024 * 1024) + b"]")
    cases += [("POST", "/events", bomb, {"Content-Type": JSON, "Content-Encoding": "gzip"})] * 3
    cases += [("POST", "/track", b"\x1f\x8b\x08garbage",
               {"Content-Type": JSON, "Content-Encoding": "gzip"})] * 3
    cases += [("POST", "/track", gzip.compress(orjson.dumps(good)) + b"garbage",
               {"Content-Type": JSON, "Content-Encoding": "gzip"})] * 3
    for ts in ("2026-W48-6T05:00Z", "20261128T050000Z", "2026-11-28T05Z"):
        cases.append(("POST", "/track", orjson.dumps({**good, "ts": ts}), {"Content-Type": JSON}))
    for content_type in ["application/xml", "text/html", "multipart/form-data; boundary=x",
                         "application/x-www-form-urlencoded", "image/png", ""]:
        for path in ("/track", "/events"):
            cases += [("POST", path, orjson.dumps(good), {"Content-Type": content_type})] * 2
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for path in ("/track", "/events"):
            cases += [(method, path, b"", {})] * 2
    cases += [("POST", "/track", b'{"page_id": "p", "user_id": "u"}' * 3, {"Content-Type": JSON})]
    cases += [("POST", "/events", b"\n\n{oops}\n", {"Content-Type": "application/x-ndjson"})] * 3
    return cases


def assert_error_shape(answer: Any) -> None:
    """Every refusal, the gateway's or NGINX's own:
    ``{"error": code, "message": text, "details": [{"index", "field", "reason"}, ...]}``."""
    assert isinstance(answer["error"], str) and isinstance(answer["message"], str), answer
    assert isinstance(answer["details"], list) and answer["details"], answer
    for detail in answer["details"]:
        assert {"index", "field", "reason"} <= set(detail), answer
        assert isinstance(detail["reason"], str) and detail["reason"], answer


async def test_two_hundred_malformed_requests_get_only_4xx_and_gateways_stay_up(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    cases = malformed_requests(random.Random(20261128))
    assert len(cases) >= 200
    semaphore = asyncio.Semaphore(16)

    async def send(method: str, path: str, body: bytes, headers: dict[str, str]
                   ) -> tuple[int, bytes, str]:
        async with semaphore, http.request(method, f"{stack.http_url}{path}",
                                           data=io.BytesIO(body), headers=headers) as response:
            return response.status, await response.read(), response.content_type

    results = await asyncio.gather(*(send(*case) for case in cases))
    statuses = sorted({status for status, _, _ in results})
    assert all(400 <= status < 500 for status in statuses), statuses
    for (status, body, content_type), case in zip(results, cases, strict=True):
        assert content_type == JSON, (status, body[:200], case[:2])
        assert_error_shape(orjson.loads(body))

    for url in stack.gateway_urls:
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
    async with http.post(f"{stack.http_url}/track", json={"page_id": "p", "user_id": "u"}) as r:
        assert r.status == 202


async def test_a_client_over_the_rate_limit_gets_429(stack: Stack) -> None:
    # 127.0.0.1 is exempt (load generators); any other address is limited per client.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=50)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one() -> tuple[int, str, bytes]:
            async with client.post(f"{stack.http_url}/track", data=b"{}",
                                   headers={"Content-Type": JSON}) as response:
                return response.status, response.headers.get("Retry-After", ""), \
                    await response.read()

        results = await asyncio.gather(*(one() for _ in range(1500)))
    limited = [r for r in results if r[0] == 429]
    assert limited, sorted({r[0] for r in results})
    assert {r[0] for r in results} <= {400, 429}  # {} is invalid: nothing is stored
    assert limited[0][1] == "1"
    assert orjson.loads(limited[0][2])["error"] == "rate_limited"
    for _, _, body in results:
        assert_error_shape(orjson.loads(body))


async def test_nginx_refusals_can_be_read_by_a_page_on_another_origin(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    """A browser hides an answer without CORS headers from the page's script: it would see a
    network error instead of a 413 or 429 it could act on."""
    async with http.post(f"{stack.http_url}/events", data=io.BytesIO(b" " * (1024 * 1024 + 10)),
                         headers={"Content-Type": JSON, "Origin": "https://shop.example"}
                         ) as response:
        assert response.status == 413
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
        assert response.headers["X-Request-Id"]
        assert_error_shape(await response.json())


async def test_hostile_query_input_through_the_front_door_gets_4xx_never_5xx(
        stack: Stack) -> None:
    """Dates whose offset overflows the calendar, ranges far beyond what one request may read
    (sent with a valid token, so the query API parses and prices them) and a token of bytes
    that are not UTF-8, sent as raw HTTP through NGINX: each a 400 naming the field, or a
    401."""
    host, port = stack.http_url.removeprefix("http://").split(":")
    token = f"Authorization: Bearer {stack.stats_token}\r\n".encode()
    requests = [
        (b"GET /stats?from=0001-01-01T00:00:00%2B23:59 HTTP/1.1\r\n", token, 400, "from"),
        (b"GET /stats/timeseries?from=2026-01-01&to=9999-12-31T23:59:59-23:59 HTTP/1.1\r\n",
         token, 400, "to"),
        (b"GET /stats?from=2016-12-01&to=2026-11-28&limit=10000 HTTP/1.1\r\n", token, 400,
         "limit"),
        (b"GET /stats/top?by=unique_visitors&from=2016-12-01&to=2026-11-28 HTTP/1.1\r\n",
         token, 400, "limit"),
        (b"GET /stats/timeseries?interval=minute&from=2016-12-01&to=2026-11-28 HTTP/1.1\r\n",
         token, 400, "interval"),
        (b"GET /stats HTTP/1.1\r\n", b"Authorization: Bearer \xff\xfe\x80abc\r\n", 401, None),
        (b"GET /stats HTTP/1.1\r\n", b"Authorization: \xc3\x28\r\n", 401, None),
    ]
    for request_line, auth, expected, field in requests:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request_line + b"Host: x\r\nConnection: close\r\n" + auth + b"\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert status == expected, (request_line, answer[:300])
        # The query API's error shape: details name the field.
        body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
        assert isinstance(body["error"], str) and isinstance(body["message"], str), body
        assert body["details"] and all("reason" in d for d in body["details"]), body
        if field is not None:
            assert body["details"][0]["field"] == field, (request_line, body)
