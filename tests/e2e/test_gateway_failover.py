"""Gateways dying or stopping under load lose no accepted event: NGINX fails over, clients
retry with their event ids, and SIGTERM drains before exiting 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp

from tests.kafka_tools import end_offsets, events_of_site, read_between
from tests.stack import OWN_PROCESS_SPARES, ROOT, Stack, eventually, restore


async def post_until_accepted(http: aiohttp.ClientSession, url: str, event: dict[str, str],
                              attempts: int = 50) -> int:
    """A well-behaved client: retry 5xx and connection errors with the same event id."""
    for attempt in range(attempts):
        try:
            async with http.post(url, json=event) as response:
                if response.status == 202:
                    return attempt
                assert response.status >= 500, await response.text()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError(f"{event['event_id']} never accepted")


async def test_a_gateway_killed_under_load_costs_no_accepted_event(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    start = await end_offsets(stack.kafka_bootstrap, stack.topic)
    events = [{"page_id": f"/p{i % 10}", "user_id": f"u{i % 50}", "site_id": site_id,
               "event_id": str(uuid.uuid4())} for i in range(1500)]
    semaphore = asyncio.Semaphore(24)
    done = 0

    async def send(event: dict[str, str]) -> int:
        nonlocal done
        async with semaphore:
            retries = await post_until_accepted(http, f"{stack.http_url}/track", event)
            done += 1
            return retries

    try:
        tasks = [asyncio.create_task(send(e)) for e in events]
        await eventually(lambda: asyncio.sleep(0, done > 300), timeout_s=30)
        stack.signal_part("gateway-2", signal.SIGKILL)
        await asyncio.gather(*tasks)
    finally:
        restore()

    published = events_of_site(await read_between(stack.kafka_bootstrap, start), site_id)
    assert {e["event_id"] for e in events} <= {e.event_id for e in published}

    async def counted_exactly() -> bool:
        async with http.get(f"{stack.http_url}/stats", params={"site_id": site_id}) as r:
            return bool((await r.json())["total_views"] == len(events))

    await eventually(counted_exactly, timeout_s=60, message="every event counted once")


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
        stack: Stack, http: aiohttp.ClientSession, site_id: str, tmp_path: Path) -> None:
    port = stack.spare_port(OWN_PROCESS_SPARES[0])
    env = {**os.environ, **stack.env(), "PORT": str(port)}
    log = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingest_gateway",
                                                cwd=ROOT, env=env, stdout=log,
                                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        try:
            async with http.get(f"{url}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(ready, timeout_s=30, message="test gateway ready")
        start = await end_offsets(stack.kafka_bootstrap, stack.topic)
        accepted: list[str] = []

        async def send(i: int) -> None:
            event = {"page_id": "/drain", "user_id": f"u{i}", "site_id": site_id,
                     "event_id": str(uuid.uuid4())}
            try:
                async with http.post(f"{url}/events", json=[event] * 1) as response:
                    if response.status == 202:
                        accepted.append(event["event_id"])
            except aiohttp.ClientError:
                pass  # refused after shutdown began: not accepted, nothing promised

        tasks = [asyncio.create_task(send(i)) for i in range(400)]
        await eventually(lambda: asyncio.sleep(0, len(accepted) > 50), timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        returncode = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert returncode == 0, (tmp_path / "gateway.log").read_text()[-2000:]
    published = {e.event_id for e in events_of_site(
        await read_between(stack.kafka_bootstrap, start), site_id)}
    assert set(accepted) <= published
    assert len(accepted) > 50
