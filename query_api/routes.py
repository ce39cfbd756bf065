"""The query API's handlers."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aiohttp import web

from contracts.httpkit import error_response, json_response, readiness_response
from contracts.settings import QuerySettings
from query_api import params
from query_api.redis_reader import RedisReader


@dataclass(frozen=True, slots=True)
class QueryDeps:
    settings: QuerySettings
    reader: RedisReader


DEPS = web.AppKey("query_deps", QueryDeps)


async def stats(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    try:
        site = params.site_id(request.query)
        limit = params.bounded_int(request.query, "limit", 100, 1, 10_000)
        offset = params.bounded_int(request.query, "offset", 0, 0, 10_000_000)
    except params.BadParameter as exc:
        return error_response(400, "bad_parameter", str(exc),
                              [{"field": exc.name, "reason": exc.reason}])
    result = await deps.reader.all_time(site, limit, offset)
    body = {"site_id": site, "from": None, "to": None, **asdict(result)}
    return json_response(body, headers={"X-Stats-Source": "redis"})


async def readyz(request: web.Request) -> web.Response:
    try:
        redis_ok = await request.app[DEPS].reader.ping()
    except Exception:  # readiness reports, it never fails
        redis_ok = False
    return readiness_response({"redis": redis_ok})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/stats", stats)
    app.router.add_get("/readyz", readyz)
