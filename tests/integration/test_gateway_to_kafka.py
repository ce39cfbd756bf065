"""The gateway through NGINX into the real Kafka: what is acknowledged is exactly what the
topic holds, and a Kafka outage is a 503, never a false 202."""

from __future__ import annotations

import uuid

import aiohttp

from tests.kafka_tools import end_offsets, events_of_site, read_between
from tests.stack import Stack, eventually, restore, stop_part

NOW_MS_SLACK = 60_000


async def test_a_batch_lands_in_kafka_exactly_as_sent(stack: Stack, http: aiohttp.ClientSession,
                                                     site_id: str) -> None:
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    sent = [{"page_id": f"/page/{i % 17}", "user_id": f"user-{i % 41}", "site_id": site_id,
             "event_id": str(uuid.uuid4()), "ts": "2026-11-27T12:00:00Z"} for i in range(300)]
    sent += [{"page_id": "/no-id", "user_id": "anon", "site_id": site_id}]
    async with http.post(f"{stack.http_url}/events", json=sent) as response:
        assert response.status == 202, await response.text()
        answer = await response.json()
    assert answer["accepted"] == len(sent)
    assert answer["event_ids"][:300] == [e["event_id"] for e in sent[:300]]

    published = events_of_site(await read_between(stack.kafka_bootstrap, start), site_id)
    by_id = {e.event_id: e for e in published}
    assert len(published) == len(sent) == len(by_id)
    for raw, event_id in zip(sent, answer["event_ids"], strict=True):
        event = by_id[event_id]
        assert (event.page_id, event.user_id, event.site_id) == (
            raw["page_id"], raw["user_id"], site_id)
    assert by_id[sent[0]["event_id"]].ts == 1_795_780_800_000  # 2026-11-27T12:00:00Z
    generated = by_id[answer["event_ids"][300]]
    assert abs(generated.ts - generated.received_at) < NOW_MS_SLACK
    assert uuid.UUID(generated.event_id).version == 7


async def test_kafka_down_means_503_and_back_up_means_202(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    event = {"page_id": "/outage", "user_id": "u1", "site_id": site_id,
             "event_id": str(uuid.uuid4())}
    stop_part("kafka")
    try:
        async with http.post(f"{stack.http_url}/track", json=event) as response:
            assert response.status == 503, await response.text()
            assert int(response.headers["Retry-After"]) >= 1
            body = await response.json()
            assert body["error"] == "unavailable" and body["event_ids"] == [event["event_id"]]

        async def some_gateway_not_ready() -> bool:
            for url in stack.gateway_urls:
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 503:
                        return True
            return False

        await eventually(some_gateway_not_ready, timeout_s=15, message="a gateway unready")
    finally:
        restore()

    async def accepted() -> bool:
        async with http.post(f"{stack.http_url}/track", json=event) as response:
            return response.status == 202

    await eventually(accepted, timeout_s=60, interval_s=0.5, message="ingestion resumed")

    # Every gateway keeps accepting (a producer whose idempotence state broke in the outage
    # is replaced, not left failing every request).
    for url in stack.gateway_urls:
        streak = 0

        async def three_in_a_row(url: str = url) -> bool:
            nonlocal streak
            batch = [{"page_id": "/after", "user_id": f"u{i}", "site_id": site_id}
                     for i in range(200)]
            async with http.post(f"{url}/events", json=batch) as response:
                streak = streak + 1 if response.status == 202 else 0
            return streak >= 3

        await eventually(three_in_a_row, timeout_s=30, interval_s=0.2,
                         message=f"{url} accepting again")

    async def outage_page_views() -> int:
        async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
            pages = (await r.json())["pages"]
            return sum(p["views"] for p in pages if p["page_id"] == "/outage")

    # The retry reused the event id: counted once, whether or not the first try reached Kafka.
    await eventually(outage_page_views, timeout_s=60, message="the retried view counted")
    assert await outage_page_views() == 1
