"""The query API's OpenAPI 3.1 description, written next to the code it describes.

Why by hand rather than generated: aiohttp has no schema layer, and a hand-written document
reviewed with the handlers is short. ``tests/unit/test_query_app.py`` keeps it honest: every
route is described, every endpoint lists exactly the parameters it accepts, and real answers
validate against the response schemas. ``/docs`` renders this same document
(``query_api.docs``). Pure data; no I/O.
"""

from __future__ import annotations

from typing import Any

from contracts.aggregates import DIMENSION_BY_API_NAME
from contracts.ingest_openapi import INGEST_SCHEMAS, ingest_paths
from query_api.auth import UNSCOPED_PATHS
from query_api.params import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET
from query_api.ranges import MAX_RANGE_DAYS, PERIODS
from query_api.routes import DEFAULT_TOP, ENDPOINT_PARAMS, MAX_SERIES_POINTS, MAX_SITES

UNIQUES_NOTE = (
    "Unique visitors from Redis are HyperLogLog estimates (standard error 0.81%); from "
    "MongoDB they are exact. Views are exact either way. `X-Stats-Source` says which store "
    "answered (`redis`, `mongo`, or both, comma-separated, for compared ranges).")

RANGE_NOTE = (
    "Ranges are half-open `[from, to)` in whole UTC minutes (`from` rounded down, `to` up). "
    "`period`: `realtime` = the current minute and the 4 before; `today` = this UTC day; "
    "`24h` = the current hour and the 23 before; `7d`/`30d` = today and the 6/29 days before; "
    "`month` = this calendar month; `all` = all time. A bare date as `to` includes that day.")

NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}


def _param(name: str, schema: dict[str, Any], description: str, where: str = "query",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema,
            "description": description}


PARAMETERS: dict[str, dict[str, Any]] = {
    "site_id": _param("site_id", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                                  "default": "default"}, "The site."),
    "period": _param("period", {"type": "string", "enum": list(PERIODS)},
                     "A named range (default `all`; `7d` for timeseries and compare). "
                     + RANGE_NOTE),
    "from": _param("from", {"type": "string"},
                   "Start: RFC 3339 date (`2026-11-28`) or date-time (`2026-11-28T10:00:00Z`)."),
    "to": _param("to", {"type": "string"},
                 f"End (exclusive; default now). At most {MAX_RANGE_DAYS} days after `from`."),
    "format": _param("format", {"type": "string", "enum": ["json", "csv"]},
                     "`csv` for a header row and one row per item (also chosen by "
                     "`Accept: text/csv`)."),
    "page_id": _param("page_id", {"type": "string", "minLength": 1, "maxLength": 512},
                      "Only this page."),
    "limit": _param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                              "default": DEFAULT_LIMIT},
                    f"Pages per answer (`/stats/top`: default {DEFAULT_TOP})."),
    "offset": _param("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
                                "default": 0}, "Pages to skip."),
    "compare": _param("compare", {"type": "string", "enum": ["previous_period"]},
                      "Add the previous range of equal length and the change."),
    "interval": _param("interval", {"type": "string", "enum": ["minute", "hour", "day"]},
                       f"Bucket size (default by range length; at most {MAX_SERIES_POINTS} "
                       "buckets)."),
    "by": _param("by", {"type": "string", "enum": ["views", "unique_visitors"],
                        "default": "views"}, "What ranks the pages."),
    "dimension": {**_param("dimension", {"type": "string",
                                         "enum": list(DIMENSION_BY_API_NAME)},
                           "What to break the range down by: referrer `source`, the UTM tags "
                           "as sent, `device` type, `browser`, `os`, or named `event`s.",
                           required=True)},
}
PARAM_ORDER = ("site_id", "dimension", "period", "from", "to", "page_id", "interval", "by",
               "limit", "offset", "compare", "format")


def _obj(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": [k for k in properties if k not in optional]}


PAGE = _obj({"page_id": {"type": "string"}, "views": COUNT, "unique_visitors": COUNT})
CHANGE = _obj({"absolute": {"type": "integer"}, "percent": {"type": ["number", "null"]}})
COMPARISON = {
    "previous": _obj({"from": NULLABLE_TIME, "to": NULLABLE_TIME, "total_views": COUNT,
                      "unique_visitors": COUNT}),
    "change": _obj({"total_views": {"$ref": "#/components/schemas/Change"},
                    "unique_visitors": {"$ref": "#/components/schemas/Change"}}),
}
RANGE = {"site_id": {"type": "string"}, "from": NULLABLE_TIME, "to": NULLABLE_TIME}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj({"error": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "array", "items": _obj(
                       {"index": {"type": ["integer", "null"]},
                        "field": {"type": ["string", "null"],
                                  "description": "The parameter; null for the whole request."},
                        "reason": {"type": "string"}}, optional=("index",))}}),
    "Page": PAGE,
    "Change": CHANGE,
    "Stats": _obj({**RANGE, "page_id": {"type": "string"}, "total_views": COUNT,
                   "unique_visitors": COUNT, "total_pages": COUNT, "filtered_bots": COUNT,
                   "limit": COUNT,
                   "offset": COUNT, "pages": {"type": "array",
                                              "items": {"$ref": "#/components/schemas/Page"}},
                   **COMPARISON}, optional=("page_id", "previous", "change")),
    "Compare": _obj({**RANGE, "page_id": {"type": ["string", "null"]}, "total_views": COUNT,
                     "unique_visitors": COUNT, **COMPARISON}),
    "PageStats": _obj({**RANGE, "page_id": {"type": "string"}, "views": COUNT,
                       "unique_visitors": COUNT}),
    "Timeseries": _obj({**RANGE, "page_id": {"type": ["string", "null"]},
                        "interval": {"type": "string", "enum": ["minute", "hour", "day"]},
                        "buckets": {"type": "array", "items": _obj({
                            "bucket": {"type": "string", "format": "date-time"},
                            "views": COUNT, "unique_visitors": COUNT})}}),
    "Top": _obj({**RANGE, "by": {"type": "string", "enum": ["views", "unique_visitors"]},
                 "pages": {"type": "array", "items": _obj({
                     "rank": {"type": "integer", "minimum": 1}, "page_id": {"type": "string"},
                     "views": COUNT, "unique_visitors": COUNT})}}),
    "Breakdown": _obj({**RANGE, "dimension": {"type": "string",
                                              "enum": list(DIMENSION_BY_API_NAME)},
                       "total_values": COUNT, "limit": COUNT, "offset": COUNT,
                       "rows": {"type": "array", "items": _obj({
                           "rank": {"type": "integer", "minimum": 1},
                           "value": {"type": "string"}, "views": COUNT,
                           "unique_visitors": COUNT})}}),
    "Realtime": _obj({**RANGE, "window_minutes": COUNT, "visitors_last_5_minutes": COUNT,
                      "views_last_minute": COUNT, "views_last_5_minutes": COUNT}),
    "Sites": _obj({"total_sites": COUNT, "sites": {"type": "array",
                                                   "items": {"type": "string"}}}),
}

ENDPOINTS: dict[str, tuple[str, str, str]] = {
    # path: (schema, summary, description)
    "/stats": ("Stats", "Totals and pages by views",
               "Total views, unique visitors and the site's pages sorted by views (ties by "
               "page id), paged with `limit`/`offset`; `total_pages` counts them all. CSV: one "
               "row per page (also with `compare`; `/stats/compare?format=csv` gives the "
               "comparison as rows)."),
    "/stats/pages/{page_id}": ("PageStats", "One page", "One page's views and unique "
                               "visitors over the range (zeros for a page never seen)."),
    "/stats/timeseries": ("Timeseries", "Views and visitors per bucket",
                          "Buckets of `interval`, gap-filled with zeros; the first and last "
                          "are clipped to the range and labelled with their start. All time "
                          "is refused (give a bounded range). CSV: one row per bucket."),
    "/stats/top": ("Top", "Top pages", "The `limit` pages with the most views or unique "
                   "visitors. CSV: one row per page."),
    "/stats/breakdown": ("Breakdown", "Sources, UTM, devices, browsers, systems, events",
                         "The values of one `dimension` ranked by views (ties by value), "
                         "with their unique visitors, paged with `limit` (default "
                         f"{DEFAULT_TOP}) and `offset`; `total_values` counts them all. "
                         "Page views only, bots never (`/stats` shows `filtered_bots`); for "
                         "`event`, `views` is the number of events of that name. `source` "
                         "is `(direct)` without a referrer; self-referrals are not counted. "
                         "Page views of `/track` and `/events` are in no breakdown (they "
                         "carry no referrer or User-Agent). Values past a "
                         "dimension's quota count as `(other)`. CSV: one row per value."),
    "/stats/realtime": ("Realtime", "Visitors right now",
                        "Unique visitors and views in the current minute and the 4 before, "
                        "and views in the current minute."),
    "/stats/compare": ("Compare", "This range against the previous one",
                       "Totals of the range, of the previous range of equal length, and the "
                       "change (`percent` is null when the previous value is 0). CSV: one row "
                       "per metric."),
    "/stats/sites": ("Sites", "Every site", f"The ids of every site with events, sorted (at "
                     f"most {MAX_SITES}; `total_sites` counts them all), as the dashboard's "
                     "site picker lists them. CSV: one row per site."),
}
# Answers without visitor counts, so without the note about how they are counted.
NO_VISITORS = frozenset({"/stats/sites"})

ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(path: str) -> dict[str, Any]:
    schema, summary, description = ENDPOINTS[path]
    names = [n for n in PARAM_ORDER if n in ENDPOINT_PARAMS[path]]
    parameters = [PARAMETERS[n] for n in names]
    if "{page_id}" in path:
        parameters.insert(0, _param("page_id", {"type": "string", "minLength": 1,
                                                "maxLength": 512}, "The page.", "path", True))
    return {"get": {
        "summary": summary,
        "description": (description if path in NO_VISITORS
                        else f"{description}\n\n{UNIQUES_NOTE}"),
        "operationId": path.strip("/").replace("/", "_").replace("{", "").replace("}", ""),
        "parameters": parameters,
        "responses": {
            "200": {"description": "The stats.",
                    "headers": {"X-Stats-Source": {"schema": {"type": "string"},
                                                   "description": "redis and/or mongo"}},
                    "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{schema}"}},
                        "text/csv": {"schema": {"type": "string"}}}},
            "400": {"description": "A parameter is invalid, or the request would cost more "
                                   "than one request may (see the README's API cost); "
                                   "`details` names the parameter.", **ERROR},
            "401": {"description": "Missing, unknown or revoked bearer token.", **ERROR},
            **({} if path in UNSCOPED_PATHS else {"403": {
                "description": "`forbidden_site`: the token may not read this site (a token "
                               "reads only the sites it was granted; `site_id` defaults to "
                               "`default`).", **ERROR}}),
            "429": {"description": "Too many requests or connections from this address "
                                   "(NGINX, the front door); see Retry-After.", **ERROR},
            "503": {"description": "Neither Redis nor MongoDB answered in time, or every "
                                   "MongoDB answer slot stayed busy (`busy`); see "
                                   "Retry-After.", **ERROR}}}}


OPERATOR_NOTE = (" For operators: served on each query API's own port, not through the "
                 "public front door (NGINX answers 404).")


def _probe(summary: str, description: str, content_type: str = "application/json"
           ) -> dict[str, Any]:
    return {"get": {"summary": summary, "description": description, "security": [],
                    "operationId": summary.lower().replace(" ", "_"),
                    "responses": {"200": {"description": "OK",
                                          "content": {content_type: {}}}}}}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {path: _operation(path) for path in ENDPOINTS}
    paths["/healthz"] = _probe("Liveness", "The process is alive.")
    paths["/readyz"] = _probe("Readiness", "Redis and MongoDB answer and the tokens were read "
                              "(503 otherwise)." + OPERATOR_NOTE)
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "A store did not answer; `checks` says which.",
        "content": {"application/json": {}}}
    paths["/metrics"] = _probe("Metrics", "Prometheus metrics." + OPERATOR_NOTE, "text/plain")
    paths["/openapi.json"] = _probe("OpenAPI", "This document." + OPERATOR_NOTE)
    paths["/docs"] = _probe("Docs", "This document as a web page." + OPERATOR_NOTE,
                            "text/html")
    paths.update(ingest_paths())  # the same front door (NGINX) serves the gateway's
    paths["/dashboard"] = _probe(
        "Dashboard", "A live dashboard of these stats, for a browser. The page is public and "
        "holds no data: its script asks the stats endpoints, sending the token the person "
        "enters (kept in the browser tab's session storage).", "text/html")
    return {
        "openapi": "3.1.0",
        "info": {"title": "pageviews query API", "version": "1",
                 "description": "Page-view stats for dashboards and BI tools, fresh from "
                                "Redis, exact from MongoDB. " + UNIQUES_NOTE},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": {**SCHEMAS, **INGEST_SCHEMAS}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A stats token (`make tokens ARGS=\"add --sites "
                                      "shop\"`, or `--admin` for every site; `make up` "
                                      "creates an admin token and writes it to "
                                      "`.run/stack.env` as `STATS_TOKEN`). A token reads only "
                                      "the sites it was granted."}}},
    }
