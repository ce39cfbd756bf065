"""Sites and stats tokens on the real stack, managed with the real CLI (``python -m admin``,
what ``make sites`` and ``make tokens`` run), seen through NGINX: only registered sites are
accepted, a token reads only its sites, a revoked one stops working, MongoDB holds only
hashes, and the operators' endpoints stay off the front door. Changes are polled for with a
deadline (the services re-read the registry every 2 s), never waited out with a sleep."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo import AsyncMongoClient

from contracts.mongo import DATABASE
from contracts.tenancy import TOKENS, token_digest
from tests.stack import Stack, admin, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
CHANGE_S = 20.0  # "within seconds": the refresh is every 2 s; generous for a loaded machine


def new_site() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


async def track(http: aiohttp.ClientSession, stack: Stack, site: str,
                origin: str | None = None, url: str | None = None) -> tuple[int, Any]:
    """POST one event through NGINX, or straight to one gateway (``url``)."""
    event = {"page_id": "/", "user_id": "u1", "site_id": site}
    headers = {} if origin is None else {"Origin": origin}
    async with http.post(f"{url or stack.http_url}/track", json=event,
                         headers=headers) as response:
        return response.status, await response.json()


async def every_gateway_answers(http: aiohttp.ClientSession, stack: Stack, site: str,
                                status: int) -> bool:
    """Each gateway re-reads the registry on its own clock: a change is seen through NGINX
    only once every one of them has it."""
    statuses = [(await track(http, stack, site, url=url))[0] for url in stack.gateway_urls]
    return all(answer == status for answer in statuses)


async def status_of(http: aiohttp.ClientSession, url: str, token: str | None,
                    **query: str) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.get(url, params=query, headers=headers) as response:
        await response.read()
        return response.status


async def test_an_unregistered_site_gets_a_403_through_the_front_door(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    status, body = await track(http, stack, new_site())
    assert status == 403 and body["error"] == "site_not_allowed"
    assert body["details"][0]["field"] == "site_id"


async def test_a_site_added_with_the_cli_is_accepted_within_seconds_and_removed_again(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    site = new_site()
    assert (await track(http, stack, site))[0] == 403
    added = admin(stack, "sites", "add", site, "--max-pages", "500",
                  "--origin", "https://shop.example")
    assert added.returncode == 0, added.stderr
    listed = [orjson.loads(line) for line in admin(stack, "sites", "list").stdout.splitlines()]
    mine = [s for s in listed if s["_id"] == site]
    assert len(mine) == 1
    assert (mine[0]["max_pages"], mine[0]["origins"]) == (500, ["https://shop.example"])
    assert any(s["_id"] == "default" for s in listed)  # `up` registered it

    async def accepted() -> bool:
        return await every_gateway_answers(http, stack, site, 202)
    await eventually(accepted, timeout_s=CHANGE_S, interval_s=0.2,
                     message="the new site accepted without a restart")
    # A browser on another web page may not post for it; one on its own origin may.
    status, body = await track(http, stack, site, origin="https://evil.example")
    assert (status, body["error"]) == (403, "origin_not_allowed")
    assert (await track(http, stack, site, origin="https://shop.example"))[0] == 202

    removed = admin(stack, "sites", "remove", site)
    assert removed.returncode == 0, removed.stderr

    async def refused() -> bool:
        return await every_gateway_answers(http, stack, site, 403)
    await eventually(refused, timeout_s=CHANGE_S, interval_s=0.2,
                     message="the removed site refused")
    assert admin(stack, "sites", "remove", site).returncode == 1  # nothing left to remove


async def test_a_token_for_one_site_reads_only_that_site_and_lists_only_it(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    other = new_site()
    assert admin(stack, "sites", "add", other).returncode == 0
    made = admin(stack, "tokens", "add", "--sites", site_id)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    await every_query_api_answers(http, stack, token, 200, site_id)
    for path in ("/stats", "/stats/top", "/stats/realtime", "/stats/pages/home"):
        assert await status_of(http, f"{stack.http_url}{path}", token, site_id=site_id) == 200
        assert await status_of(http, f"{stack.http_url}{path}", token, site_id=other) == 403
        assert await status_of(http, f"{stack.http_url}{path}", token) == 403  # "default"
        assert await status_of(http, f"{stack.http_url}{path}", stack.stats_token,
                               site_id=other) == 200  # the admin token reads every site
    async with http.get(f"{stack.http_url}/stats/sites",
                        headers={"Authorization": f"Bearer {token}"}) as response:
        listed = await response.json()
    assert set(listed["sites"]) <= {site_id} and listed["total_sites"] == len(listed["sites"])
    assert admin(stack, "sites", "remove", other).returncode == 0


async def every_query_api_answers(http: aiohttp.ClientSession, stack: Stack, token: str,
                                  status: int, site_id: str) -> None:
    """Wait until each query API of the stack (NGINX picks any) answers ``status`` for the
    token: each re-reads the tokens on its own 2 s clock."""
    async def all_agree() -> bool:
        return all([await status_of(http, f"{url}/stats", token, site_id=site_id) == status
                    for url in stack.query_urls])
    await eventually(all_agree, timeout_s=CHANGE_S, interval_s=0.1,
                     message=f"every query API answering {status}")


async def test_a_revoked_token_gets_401_within_seconds(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    made = admin(stack, "tokens", "add", "--sites", site_id)
    token = made.stdout.strip()
    url = f"{stack.http_url}/stats"
    await every_query_api_answers(http, stack, token, 200, site_id)
    listed = [orjson.loads(line) for line in admin(stack, "tokens", "list").stdout.splitlines()]
    token_id = next(t["_id"] for t in listed if t["sites"] == [site_id])
    assert admin(stack, "tokens", "revoke", token_id).returncode == 0
    await every_query_api_answers(http, stack, token, 401, site_id)
    assert await status_of(http, url, token, site_id=site_id) == 401  # and through NGINX
    assert admin(stack, "tokens", "revoke", token_id).returncode == 1


async def test_mongodb_and_the_token_list_hold_hashes_only(stack: Stack, site_id: str) -> None:
    made = admin(stack, "tokens", "add", "--sites", site_id)
    token = made.stdout.strip()
    assert len(token) >= 40 and token not in made.stderr
    listing = admin(stack, "tokens", "list").stdout
    assert token not in listing and "sha256" not in listing
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    try:
        stored = await client[DATABASE][TOKENS].find({}).to_list()
    finally:
        await client.close()
    assert any(doc["sites"] == [site_id] for doc in stored)
    dumped = orjson.dumps(stored, default=str).decode()
    assert token not in dumped
    assert stack.stats_token not in dumped  # nor the admin token `up` created


async def test_stats_need_a_token_and_the_stack_admin_token_works(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    url = f"{stack.http_url}/stats"
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:
        assert response.status == 401
    assert await status_of(http, url, "not-a-token") == 401
    assert await status_of(http, url, stack.stats_token) == 200


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/docs", "/openapi.json",
                                  "/metrics/", "/%6Detrics"])
async def test_operator_endpoints_are_not_served_through_the_front_door(
        stack: Stack, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(f"{stack.http_url}{path}") as response:
        assert response.status == 404, path
        assert (await response.json())["error"] == "not_found"
    own = path if "%" not in path else "/metrics"
    if not own.endswith("/"):
        async with http.get(f"{stack.query_urls[0]}{own}") as response:
            assert response.status in (200, 503), own  # on the service's own port


async def test_init_keeps_the_one_admin_token_and_stores_a_given_one_by_hash_once(
        stack: Stack) -> None:
    again = admin(stack, "init")  # what every later `make up` runs
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout.splitlines()[-1])["token"] is None  # none created
    given = f"compose-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    for _ in range(2):  # as compose's init does on every `up`
        run = admin(stack, "init", "--admin-token-env", "TEST_ADMIN_TOKEN",
                    TEST_ADMIN_TOKEN=given)
        assert run.returncode == 0, run.stderr
        assert given not in run.stdout
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    try:
        tokens = client[DATABASE][TOKENS]
        mine = await tokens.find({"sha256": token_digest(given.encode())}).to_list()
        recorded = await tokens.find_one({"sha256": token_digest(stack.stats_token.encode())})
        await tokens.delete_many({"sha256": token_digest(given.encode())})
    finally:
        await client.close()
    assert len(mine) == 1 and mine[0]["admin"] is True
    assert recorded is not None and recorded["admin"] is True  # STATS_TOKEN in stack.env
