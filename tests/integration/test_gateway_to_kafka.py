"""The gateway through NGINX into the real Kafka: what is acknowledged is exactly what the
topic holds, in every body format, and a Kafka outage is a 503, never a false 202."""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import TopicPartition

from contracts.event import PageView
from contracts.timebuckets import iso_z
from tests.kafka_tools import end_offsets, keyed_events_of_site, read_between
from tests.stack import Stack, eventually, restore, stop_part

Encode = tuple[str, str, dict[str, str]]  # path, content type, extra headers


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def records_of_site(bootstrap: str, start: dict[TopicPartition, int], site_id: str
                          ) -> list[tuple[bytes | None, PageView]]:
    """(Kafka key, decoded event) of every record of ``site_id`` from ``start`` to the end
    offsets as they are now."""
    return keyed_events_of_site(await read_between(bootstrap, start), site_id)


# An hour ago on a whole second, plus 250 ms: as RFC 3339 text and as epoch milliseconds.
HOUR_AGO_MS = (time.time_ns() // 1_000_000_000 - 3600) * 1000 + 250
HOUR_AGO_RFC3339 = iso_z(HOUR_AGO_MS).replace("Z", ".250Z")


def batch(site_id: str, n: int) -> list[dict[str, Any]]:
    """Events exercising every optional field: client ids or none, RFC 3339 or epoch-ms
    ts or none, non-ASCII text."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        event: dict[str, Any] = {"page_id": f"/päge/{i % 17}/✓", "user_id": f"user {i % 41}",
                                 "site_id": site_id}
        if i % 3:
            event["event_id"] = str(uuid.uuid4())
        if i % 4 == 1:
            event["ts"] = HOUR_AGO_RFC3339
        elif i % 4 == 2:
            event["ts"] = now_ms() - 60_000
        events.append(event)
    return events


def expected_ts(raw: dict[str, Any]) -> int | None:
    if "ts" not in raw:
        return None  # time of receipt
    return HOUR_AGO_MS if isinstance(raw["ts"], str) else int(raw["ts"])


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


GZIP = {"Content-Encoding": "gzip"}


@pytest.mark.parametrize(("path", "content_type", "headers", "encode"), [
    ("/events", "application/json", {}, orjson.dumps),
    ("/events", "application/x-ndjson", {}, ndjson),
    ("/events", "application/json; charset=utf-8", GZIP, lambda e: gzip.compress(orjson.dumps(e))),
    # Two gzip members, as a client appending compressed chunks sends them.
    ("/events", "application/x-ndjson", GZIP,
     lambda e: gzip.compress(ndjson(e[:100])) + gzip.compress(ndjson(e[100:]))),
    ("/events", "text/plain;charset=UTF-8", {}, orjson.dumps),  # navigator.sendBeacon
    ("/track", "text/plain;charset=UTF-8", {}, lambda e: orjson.dumps(e[0])),
], ids=["json", "ndjson", "gzip-json", "gzip-ndjson-two-members", "beacon-batch",
        "beacon-track"])
async def test_a_batch_lands_in_kafka_exactly_as_sent(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, path: str,
        content_type: str, headers: dict[str, str],
        encode: Callable[[list[dict[str, Any]]], bytes]) -> None:
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    sent = batch(site_id, 301 if path == "/events" else 1)
    headers = {"Content-Type": content_type, **headers}
    before = now_ms()
    async with http.post(f"{stack.http_url}{path}", data=encode(sent),
                         headers=headers) as response:
        assert response.status == 202, await response.text()
        answer = await response.json()
    after = now_ms()
    assert answer["accepted"] == len(sent) == len(answer["event_ids"])

    records = await records_of_site(stack.kafka_bootstrap, start, site_id)
    by_id = {event.event_id: (key, event) for key, event in records}
    assert len(records) == len(by_id) == len(sent)  # nothing extra, nothing twice
    for raw, event_id in zip(sent, answer["event_ids"], strict=True):
        if "event_id" in raw:
            assert event_id == raw["event_id"]
        else:
            assert uuid.UUID(event_id).version == 7
        key, event = by_id[event_id]
        assert before <= event.received_at <= after
        assert event == PageView(event_id=event_id, site_id=site_id, page_id=raw["page_id"],
                                 user_id=raw["user_id"],
                                 ts=expected_ts(raw) or event.received_at,
                                 received_at=event.received_at)
        assert key == f"{site_id}:{raw['user_id']}".encode()


async def post_until(http: aiohttp.ClientSession, url: str, body: object) -> dict[str, Any]:
    """Retry until 202, as a client that reuses its event ids would."""
    answer: dict[str, Any] = {}

    async def accepted() -> bool:
        nonlocal answer
        async with http.post(url, json=body) as response:
            answer = await response.json()
            return response.status == 202

    await eventually(accepted, timeout_s=60, interval_s=0.5, message=f"{url} accepted")
    return answer


async def test_kafka_down_means_503_and_back_up_means_202(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    event = {"page_id": "/outage", "user_id": "u1", "site_id": site_id,
             "event_id": str(uuid.uuid4())}
    events = [{"page_id": "/outage-batch", "user_id": f"u{i}", "site_id": site_id,
               **({"event_id": str(uuid.uuid4())} if i % 2 else {})} for i in range(50)]
    stop_part("kafka")
    try:
        async with http.post(f"{stack.http_url}/track", json=event) as response:
            assert response.status == 503, await response.text()
            assert int(response.headers["Retry-After"]) >= 1
            body = await response.json()
            assert body["error"] == "unavailable" and body["event_ids"] == [event["event_id"]]
        async with http.post(f"{stack.http_url}/events", json=events) as response:
            assert response.status == 503, await response.text()
            assert int(response.headers["Retry-After"]) >= 1
            body = await response.json()
        assert body["error"] == "unavailable" and "accepted" not in body
        assert body["details"] and len(body["event_ids"]) == len(events)
        for raw, event_id in zip(events, body["event_ids"], strict=True):
            assert event_id == raw.get("event_id", event_id) and event_id
        retry = [{**raw, "event_id": event_id}
                 for raw, event_id in zip(events, body["event_ids"], strict=True)]

        for url in stack.gateway_urls:
            await eventually(partial(readyz_is, http, url, 503), timeout_s=30,
                             message=f"{url} unready while Kafka is down")
    finally:
        restore()

    for url in stack.gateway_urls:
        await eventually(partial(readyz_is, http, url, 200), timeout_s=60,
                         message=f"{url} ready again")
    await post_until(http, f"{stack.http_url}/track", event)
    assert (await post_until(http, f"{stack.http_url}/events", retry))["event_ids"] == \
        [e["event_id"] for e in retry]

    # Every gateway keeps accepting (a producer whose idempotence state broke in the outage
    # is replaced, not left failing every request).
    for url in stack.gateway_urls:
        streak = 0

        async def three_in_a_row(url: str = url) -> bool:
            nonlocal streak
            more = [{"page_id": "/after", "user_id": f"u{i}", "site_id": site_id}
                    for i in range(200)]
            async with http.post(f"{url}/events", json=more) as response:
                streak = streak + 1 if response.status == 202 else 0
            return streak >= 3

        await eventually(three_in_a_row, timeout_s=30, interval_s=0.2,
                         message=f"{url} accepting again")

    # The topic holds every retried id at least once (a first try that reached Kafka before
    # the timeout is a duplicate there, which the aggregator drops), and no other id.
    expected = {event["event_id"]} | {e["event_id"] for e in retry}
    published = {e.event_id for _, e in await records_of_site(stack.kafka_bootstrap, start,
                                                              site_id)
                 if e.page_id in ("/outage", "/outage-batch")}
    assert published == expected

    async def outage_page_views() -> dict[str, int]:
        async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
            pages = (await r.json())["pages"]
            return {p["page_id"]: p["views"] for p in pages if p["page_id"].startswith("/outage")}

    # Retries reused the event ids: each view counted once.
    want = {"/outage": 1, "/outage-batch": len(events)}

    async def counted() -> bool:
        return await outage_page_views() == want

    await eventually(counted, timeout_s=60, message="the retried views counted")
    assert await outage_page_views() == want


async def readyz_is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    try:
        async with http.get(f"{url}/readyz") as response:
            return response.status == status
    except aiohttp.ClientError:
        return False
