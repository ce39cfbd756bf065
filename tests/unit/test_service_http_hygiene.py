"""What every service's HTTP answers share, through aiohttp's test client: ``nosniff`` on
every answer (successes, the services' own errors, aiohttp's 404 and 405, a crash), and a
``/metrics`` that made-up methods and paths cannot grow."""

from __future__ import annotations

import random
import string
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app as aggregator_app
from aggregator.metrics import AggregatorMetrics
from contracts.httpkit import HttpMetrics, service_middlewares
from contracts.registry import FixedRegistry
from contracts.settings import GatewaySettings, QuerySettings
from contracts.tenancy import registry_of, token_document
from ingest_gateway.app import create_app as gateway_app
from query_api.app import create_app as query_app
from tests.unit.test_gateway_app import NOW, FakePublisher
from tests.unit.test_query_app import MemoryReader

Client = TestClient[web.Request, web.Application]
Factory = Callable[..., Awaitable[Client]]
SERVICES = ("gateway", "query", "query_with_auth", "aggregator")


def build(service: str) -> web.Application:
    if service == "gateway":
        return gateway_app(GatewaySettings(), publisher=FakePublisher(), clock_ms=lambda: NOW)
    if service.startswith("query"):
        with_auth = service == "query_with_auth"
        registry = FixedRegistry(registry_of([], [token_document("id0", "s3cret", (),
                                                                 admin=True)]))
        return query_app(QuerySettings(auth_disabled=not with_auth), clock_ms=lambda: NOW,
                         readers=(MemoryReader("redis"), MemoryReader("mongo")),
                         registry=registry)
    return aggregator_app(AggregatorMetrics(), lambda: {"consumer": True})


REQUESTS = [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/nowhere"),
            ("DELETE", "/healthz"), ("POST", "/track"), ("POST", "/events"),
            ("GET", "/stats?site_id=shop"), ("GET", "/stats?limit=0"), ("GET", "/stats/top"),
            ("GET", "/stats?from=0001-01-01T00:00:00%2B23:59"), ("GET", "/openapi.json"),
            ("GET", "/docs"), ("GET", "/dashboard"), ("GET", "/readyz"), ("OPTIONS", "/track")]


@pytest.mark.parametrize("service", SERVICES)
async def test_every_answer_of_every_service_says_nosniff(
        aiohttp_client: Factory, service: str) -> None:
    client = await aiohttp_client(TestServer(build(service)))
    statuses = set()
    for method, path in REQUESTS:
        response = await client.request(method, path)
        statuses.add(response.status)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (method, path,
                                                                            response.status)
    assert 200 in statuses and statuses & {401, 404}  # successes and refusals both seen


async def test_even_a_crashing_handler_answers_nosniff(aiohttp_client: Factory) -> None:
    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=service_middlewares(HttpMetrics("t")))
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(TestServer(app))
    response = await client.get("/boom")
    assert response.status == 500
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def junk(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=size))


# Methods aiohttp's parser (llhttp) accepts although no route serves them; a made-up token
# is refused by the parser itself (400, before any middleware) unless aiohttp runs its pure
# Python parser, which takes any token: the label must be bounded either way.
PARSER_METHODS = ("PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE",
                  "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY",
                  "SUBSCRIBE", "UNSUBSCRIBE", "LINK", "UNLINK", "SOURCE", "TRACE")


@pytest.mark.parametrize("service", SERVICES)
async def test_five_hundred_made_up_methods_and_paths_leave_metrics_small(
        aiohttp_client: Factory, service: str) -> None:
    client = await aiohttp_client(TestServer(build(service)))
    before = len(await (await client.get("/metrics")).read())
    rng = random.Random(service)
    for i in range(500):
        method = (junk(rng, rng.randint(20, 1000)) if i % 10 == 0
                  else rng.choice(PARSER_METHODS) if i % 2 else rng.choice(["GET", "POST"]))
        path = "/" + junk(rng, rng.randint(20, 1000)).lower()
        await (await client.request(method, path)).read()
    text = (await (await client.get("/metrics")).read()).decode()
    # Each new (route, method, status) adds a few lines; 500 raw methods or paths would
    # add 500 label values of up to 1,000 characters each (about 1 MB).
    assert len(text) < before + 20_000, len(text) - before
    assert 'method="OTHER"' in text
    assert 'route="unmatched"' in text
