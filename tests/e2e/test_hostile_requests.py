"""Issue 15's hostile-request suite: each attack, sent to the private stack, gets the answer
the README's Security section documents. This docstring is the index: for each attack, the
tests that send it (file, then test), with the answer they check. Tests that had no home
elsewhere are in this module ("here"). E2E files are in tests/e2e/; "integration" means the
test drives the code of this checkout against the stack's own servers.

1. Unbounded Redis memory from anonymous ingestion (random site ids, 512-character random
   page ids): 403 ``site_not_allowed``, nothing stored anywhere.
   - here: ``test_random_sites_with_long_random_pages_get_403_and_leave_no_trace``
   - test_tenancy.py: ``test_an_unregistered_site_gets_a_403_through_the_front_door``
   - a registered site flooding new page ids (the page quota): test_page_quota_flood.py
   - a registered site flooding events (429 ``site_rate_limited``): test_site_rate_limit.py
2. One authenticated query tying up Redis or the query API. Through NGINX with a token,
   ``limit=10000`` over ten years, ``/stats/top?by=unique_visitors`` over ten years, a
   minute time series over ten years: 400 naming ``limit`` / ``interval``.
   - test_hostile_input.py:
     ``test_hostile_query_input_through_the_front_door_gets_4xx_never_5xx``
   Odd-minute ranges older than 48 h (MongoDB answers them), forty at once: each answered
   exactly or ``503 busy`` with ``Retry-After: 2``; ``compare=previous_period`` on such a
   range (its MongoDB queries one after the other): exact, within the one request deadline.
   - here: ``test_fallback_queries_at_once_and_compare_on_mongodb_are_bounded_and_exact``
   - the cap made deterministic by holding MongoDB's answers (integration),
     tests/integration/test_query_api.py:
     ``test_mongo_answers_beyond_the_cap_get_503_busy_with_retry_after``
   - the deadline cutting a held comparison short, tests/unit/test_query_app.py:
     ``test_an_answer_past_the_request_deadline_is_a_503_before_nginx_gives_up``
3. Tokens not scoped: a token for site A gets 403 for site B, ``/stats/sites`` lists only
   A, no token gets 401, there is no default token.
   - test_tenancy.py: ``test_a_token_for_one_site_reads_only_that_site_and_lists_only_it``,
     ``test_stats_need_a_token_and_the_stack_admin_token_works``
   - tests/unit/test_deployment_files.py: ``test_no_token_has_a_default_anywhere_in_compose``,
     ``test_compose_refuses_to_start_without_an_admin_token``
4. One site erasing another's events by posting its event ids first (through NGINX): none
   suppressed (integration), tests/integration/test_event_identity.py:
   ``test_a_site_posting_another_sites_event_ids_first_suppresses_none_of_its_events``
5. Metric labels from random long HTTP methods, to every service and through NGINX:
   ``/metrics`` stays small (the method label is ``OTHER``); ``/metrics`` is 404 at NGINX.
   - test_front_door_limits.py:
     ``test_five_hundred_made_up_methods_and_paths_do_not_grow_any_metrics``
   - tests/unit/test_gateway_app.py (the label):
     ``test_made_up_methods_are_counted_as_other_and_do_not_grow_the_metrics``
   - test_tenancy.py: ``test_operator_endpoints_are_not_served_through_the_front_door``
6. 500s. ``from=0001-01-01T00:00:00+23:59`` with a token: 400 naming ``from``; non-UTF-8
   bytes in ``Authorization``: 401; both raw through NGINX.
   - test_hostile_input.py:
     ``test_hostile_query_input_through_the_front_door_gets_4xx_never_5xx``
   A MongoDB query naming tens of thousands of long page ids (20 MB, over the 16 MiB
   command limit): asked in pieces, answered (integration, the reader on the stack's
   MongoDB; not through NGINX), tests/integration/test_query_api.py:
   ``test_visitors_of_twenty_megabytes_of_page_ids_are_asked_in_pieces_under_16_mib``
7. Slow clients and floods at NGINX: stalled headers or body cut off, ``limit_conn`` and
   the query locations' rate limit answer 429, and so does the ingestion rate limit.
   - test_front_door_limits.py: ``test_a_client_that_stalls_its_body_or_its_headers_is_cut_off``,
     ``test_an_address_opening_too_many_connections_gets_429_for_the_rest``,
     ``test_a_flood_of_queries_from_one_address_gets_429s_never_a_5xx``
   - test_hostile_input.py: ``test_a_client_over_the_rate_limit_gets_429``
8. Privacy. User ids pseudonymised before Kafka and MongoDB: test_privacy.py. Raw events
   expire (integration, the stack's MongoDB server): tests/integration/test_raw_retention.py.
   Control characters in ``user_id``: 400 naming it, nothing counted.
   - here: ``test_control_characters_in_user_id_are_refused_and_nothing_is_counted``
9. CSV cells a spreadsheet would evaluate (a leading space, the full-width equals sign,
   ...) are prefixed with ``'``; every answer says ``nosniff``.
   - here: ``test_csv_through_the_front_door_defuses_every_formula_like_page_id``
   - test_front_door_limits.py:
     ``test_every_answer_through_the_front_door_forbids_sniffing_once``

Beyond these, test_hostile_input.py sends 200 malformed ingestion requests (4xx only).
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import string
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from contracts.timebuckets import DAY_MS, HOUR_MS, MINUTE_MS, iso_z
from tests.e2e.test_hostile_input import assert_error_shape
from tests.stack import Stack, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
JSON = {"Content-Type": "application/json"}
REQUEST_DEADLINE_S = 25  # QUERY_REQUEST_TIMEOUT_MS


async def stats(http: aiohttp.ClientSession, stack: Stack, path: str = "/stats", **query: str
                ) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(f"{stack.http_url}{path}", params=query) as response:
        return response.status, await response.json(), response.headers


async def test_random_sites_with_long_random_pages_get_403_and_leave_no_trace(
        stack: Stack, http: aiohttp.ClientSession, redis: Redis,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    rng = random.Random(1501)
    marker = uuid.uuid4().hex[:12]
    alphabet = string.ascii_letters + string.digits + "/-_.é😀"
    sites = [f"hx{marker}{i}" for i in range(50)]
    for site in sites:
        batch = [{"site_id": site, "user_id": f"u{n}",
                  "page_id": "".join(rng.choices(alphabet, k=512))} for n in range(20)]
        async with http.post(f"{stack.http_url}/events", data=orjson.dumps(batch),
                             headers=JSON) as response:
            body = await response.json()
        assert response.status == 403, body
        assert_error_shape(body)
        assert body["error"] == "site_not_allowed"
        assert {d["index"] for d in body["details"]} == set(range(20))
        assert {d["field"] for d in body["details"]} == {"site_id"}
    # Nothing reached Kafka, so no aggregator wrote anything anywhere.
    assert [key async for key in redis.scan_iter(match=f"*{marker}*", count=10_000)] == []
    assert await mongo_events.count_documents({"site_id": {"$regex": marker}}) == 0


async def test_control_characters_in_user_id_are_refused_and_nothing_is_counted(
        stack: Stack, http: aiohttp.ClientSession, site_id: str,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    for user_id in ["a\x00b", "esc\x1b[31m", "tab\there", "new\nline", "del\x7f", "c1\x85"]:
        event = {"site_id": site_id, "page_id": "/p", "user_id": user_id}
        for path, body, index in (("/track", event, 0), ("/events", [event, event], 1)):
            async with http.post(f"{stack.http_url}{path}", data=orjson.dumps(body),
                                 headers=JSON) as response:
                answer = await response.json()
            assert response.status == 400, (user_id, answer)
            assert_error_shape(answer)
            assert answer["error"] == "validation_failed"
            assert {(d["field"]) for d in answer["details"]} == {"user_id"}, answer
            assert index in {d["index"] for d in answer["details"]}
    async with http.post(f"{stack.http_url}/track", headers=JSON, data=orjson.dumps(
            {"site_id": site_id, "page_id": "/p", "user_id": "fine"})) as response:
        assert response.status == 202

    async def counted() -> bool:
        return bool((await stats(http, stack, site_id=site_id))[1]["total_views"] == 1)
    await eventually(counted, timeout_s=60, interval_s=0.2, message="the one valid view")
    assert await mongo_events.count_documents({"site_id": site_id}) == 1


FORMULAS = [" =1+1", "\uff1d1+1", "=cmd|' /C calc'!A0", "+1", "-1", "@SUM(1)", "\u3000@x",
            "\uff0b1", "\ufe6bx"]
PLAIN = ["/pricing", "a=b", "1-2"]


async def test_csv_through_the_front_door_defuses_every_formula_like_page_id(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    events = [{"site_id": site_id, "page_id": page, "user_id": "u"} for page in FORMULAS + PLAIN]
    async with http.post(f"{stack.http_url}/events", data=orjson.dumps(events),
                         headers=JSON) as response:
        assert response.status == 202, await response.text()

    async def counted() -> bool:
        return bool((await stats(http, stack, site_id=site_id))[1]["total_pages"] == len(events))
    await eventually(counted, timeout_s=60, interval_s=0.2, message="every page counted")

    async with http.get(f"{stack.http_url}/stats", params={
            "site_id": site_id, "format": "csv", "limit": "100"}) as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        assert response.headers.getall("X-Content-Type-Options") == ["nosniff"]
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    cells = {row["page_id"] for row in rows}
    assert cells == {"'" + page for page in FORMULAS} | set(PLAIN), cells
    _, body, _ = await stats(http, stack, site_id=site_id, limit="100")  # JSON: as sent
    assert {p["page_id"] for p in body["pages"]} == set(FORMULAS + PLAIN)


async def test_fallback_queries_at_once_and_compare_on_mongodb_are_bounded_and_exact(
        stack: Stack, http: aiohttp.ClientSession, site_id: str) -> None:
    """Minutes older than 48 h are only in MongoDB. Forty such queries at once: each is
    answered exactly or turned away with ``503 busy`` and ``Retry-After: 2`` (at most
    MONGO_QUERY_CONCURRENCY run at once per query API), never another 5xx; a comparison
    with the previous period, three MongoDB queries in a row, is answered exactly within
    the one request deadline."""
    base = (int(time.time() * 1000) - 3 * DAY_MS) // HOUR_MS * HOUR_MS
    start, end = base + 7 * MINUTE_MS, base + 37 * MINUTE_MS  # 30 odd minutes, 3 days ago
    current = [start + n * MINUTE_MS for n in range(6)]
    previous = [start - (n + 1) * MINUTE_MS for n in range(4)]  # in [start - 30 min, start)
    events = [{"site_id": site_id, "page_id": f"/p{i % 3}", "user_id": f"u{i}", "ts": ts}
              for i, ts in enumerate(current + previous)]
    async with http.post(f"{stack.http_url}/events", data=orjson.dumps(events),
                         headers=JSON) as response:
        assert response.status == 202, await response.text()
    window = {"site_id": site_id, "from": iso_z(start), "to": iso_z(end)}

    async def stored() -> bool:
        status, body, _ = await stats(http, stack, **window)
        return status == 200 and body["total_views"] == len(current)
    await eventually(stored, timeout_s=60, interval_s=0.2, message="the old views stored")

    answers = await asyncio.gather(*(stats(http, stack, **window) for _ in range(40)))
    for status, body, headers in answers:
        if status == 503:
            assert (body["error"], headers["Retry-After"]) == ("busy", "2"), body
        else:
            assert status == 200, body
            assert headers["X-Stats-Source"] == "mongo"
            assert (body["total_views"], body["unique_visitors"]) == (6, 6)

    began = time.monotonic()
    status, body, headers = await stats(http, stack, **window, compare="previous_period")
    assert time.monotonic() - began < REQUEST_DEADLINE_S
    assert status == 200, body
    assert headers["X-Stats-Source"] == "mongo"
    assert (body["total_views"], body["previous"]["total_views"]) == (6, 4)
    assert body["previous"]["from"] == iso_z(start - 30 * MINUTE_MS)
    assert body["change"]["total_views"] == {"absolute": 2, "percent": 50.0}
