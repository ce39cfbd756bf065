"""The OpenAPI 3.1 description of the ingestion endpoints (``POST /track``, ``POST /events``).

Why in ``contracts``: it is derived from the v1 event contract next door, the gateway serves
it as its own ``/openapi.json``, and the query API merges it into the front door's document
(NGINX serves one ``/openapi.json`` for both), without either service importing the other.
Pure data; no I/O.
"""

from __future__ import annotations

from typing import Any

from contracts.event import MAX_EVENT_ID, MAX_PAGE_ID, MAX_USER_ID
from contracts.settings import GatewaySettings

# ECMA-262 (JSON Schema) form of the "no control characters" rule of contracts.event.
NO_CONTROL_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
MAX_BATCH_EVENTS = GatewaySettings.max_batch_events  # the default; a deployment may lower it

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A page view (v1). Unknown fields are rejected.",
    "required": ["page_id", "user_id"],
    "additionalProperties": False,
    "properties": {
        "page_id": {"type": "string", "minLength": 1, "maxLength": MAX_PAGE_ID,
                    "pattern": NO_CONTROL_PATTERN,
                    "description": "The page (path or name); no control characters; "
                                   "not `(other)`, the page quota's overflow page."},
        "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID,
                    "pattern": NO_CONTROL_PATTERN,
                    "description": "The visitor (pseudonymous id); no control characters."},
        "site_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                    "default": "default"},
        "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID,
                     "pattern": NO_CONTROL_PATTERN,
                     "description": "Make retries safe: an event id is counted once. "
                                    "Assigned (time-ordered UUIDv7) when absent."},
        "ts": {"type": ["integer", "string"], "description": (
            "When it happened: epoch milliseconds or an RFC 3339 date-time with a zone; "
            "default now. At most 5 minutes ahead, at most the late window (7 days) back.")},
    },
}

_ERROR: dict[str, Any] = {"content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/IngestError"}}}}

INGEST_SCHEMAS: dict[str, Any] = {
    "PageView": EVENT_SCHEMA,
    "Accepted": {
        "type": "object", "required": ["accepted", "event_ids"],
        "properties": {"accepted": {"type": "integer", "minimum": 1},
                       "event_ids": {"type": "array", "items": {"type": "string"}}}},
    "IngestError": {
        "description": "Every error, the gateway's or NGINX's own, has this shape.",
        "type": "object", "required": ["error", "message", "details"],
        "properties": {
            "error": {"type": "string"}, "message": {"type": "string"},
            "reason": {"type": "string"},
            "event_ids": {"type": "array", "items": {"type": "string"},
                          "description": "503 only: retry with these ids."},
            "details": {"type": "array", "items": {
                "type": "object", "required": ["index", "field", "reason"], "properties": {
                    "index": {"type": ["integer", "null"],
                              "description": "The event (or NDJSON line); null for the "
                                             "whole body."},
                    "field": {"type": ["string", "null"]},
                    "reason": {"type": "string"}}}}}},
}


def _post(summary: str, description: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "description": description, "security": [],
        "operationId": summary.lower().replace(" ", "_"),
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "202": {"description": "Kafka acknowledged every event.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
            "400": {"description": "Malformed JSON or invalid events; `details` lists each "
                                   "by index and field. Nothing was accepted.", **_ERROR},
            "403": {"description": "`site_not_allowed`: an event is for a site this "
                                   "deployment does not serve (sites are registered with "
                                   "`make sites ARGS=\"add shop\"`), or "
                                   "`origin_not_allowed`: a browser request (with `Origin`) "
                                   "for a site whose registered "
                                   "origins do not include it. Nothing was accepted.",
                    **_ERROR},
            "413": {"description": "Body over 1 MiB (after decompression) or too many events.",
                    **_ERROR},
            "405": {"description": "Any method but POST (and the CORS preflight's OPTIONS); "
                                   "`Allow` names them.", **_ERROR},
            "415": {"description": "Unsupported Content-Type or Content-Encoding.", **_ERROR},
            "429": {"description": "`rate_limited`: too many requests from this client "
                                   "(NGINX); or `site_rate_limited`: a site of the request "
                                   "is over its events/s in this gateway (`details` names "
                                   "it; set with `make sites ARGS=\"set shop "
                                   "--max-events-per-s N\"`). `Retry-After` says when to "
                                   "retry. Nothing was accepted.", **_ERROR},
            "503": {"description": "Kafka did not acknowledge in time, or the gateway could "
                                   "not read the site registry since it started "
                                   "(`Retry-After`); "
                                   "retry with the returned `event_ids`.", **_ERROR}}}}


ENCODINGS = (" Also accepted: `text/plain` with the same JSON (`navigator.sendBeacon`), and "
             "`Content-Encoding: gzip` or `deflate`. CORS: any origin by default.")


def _tracker_post(summary: str, description: str, ok: dict[str, Any],
                  error: dict[str, Any]) -> dict[str, Any]:
    """A tracker format's endpoint: its answers copy the tool's own shapes."""
    shaped = {"description": "Refused; see the description for the status.",
              "content": {"application/json": {"schema": error}}}
    return {"post": {
        "summary": summary, "description": description, "security": [],
        "operationId": summary.lower().replace(" ", "_").replace("'", ""),
        "requestBody": {"required": True, "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": ["object", "array"]}}}},
        "responses": {**ok, "400": shaped, "403": shaped, "413": shaped, "415": shaped,
                      "429": shaped, "503": shaped}}}


_PLAUSIBLE_ERROR = {"type": "object", "properties": {"errors": {
    "type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}
_UMAMI_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "code": {"type": "string"}, "status": {"type": "integer"}}}}}
_UMAMI_OK = {"200": {"description": "Kafka acknowledged every event.", "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "accepted": {"type": "integer"},
        "event_ids": {"type": "array", "items": {"type": "string"}}}}}}}}
TRACKERS = (" The visitor is derived without cookies (a keyed hash of site, client address and "
            "User-Agent under a salt that rotates daily) unless the tracker sends its own id.")


def tracker_paths() -> dict[str, Any]:
    """Plausible's Events API and Umami's collection endpoints, for their official trackers."""
    return {
        "/api/event": _tracker_post(
            "Plausible event", "Plausible's Events API (`@plausible-analytics/tracker` with "
            "`endpoint`, `plausible-tracker` with `apiHost`): `domain` names the site (a comma "
            "list: several), `url` the page; `name` `pageview` is a page view, any other name "
            "an event counted per name. 202 `ok`; refusals `{\"errors\": {field: [message]}}`."
            + TRACKERS, {"202": {"description": "Kafka acknowledged the event(s): `ok`."}},
            _PLAUSIBLE_ERROR),
        "/api/send": _tracker_post(
            "Umami send", "Umami's `{type, payload}` (`script.js` with `data-host-url`, "
            "`@umami/node` with `hostUrl`); the payload's `website` must be registered with "
            "`make sites ARGS=\"set SITE --umami-website UUID\"` (else 400 `Website not "
            "found.`). `identify`, `performance` and `engagement` are answered and not stored."
            + TRACKERS, _UMAMI_OK, _UMAMI_ERROR),
        "/api/batch": _tracker_post(
            "Umami batch", "A JSON array of up to 1000 `/api/send` bodies; invalid elements "
            "are listed in `details` by index, the valid ones are stored." + TRACKERS,
            _UMAMI_OK, _UMAMI_ERROR),
    }


def ingest_paths() -> dict[str, Any]:
    return {
        "/track": _post("Track", "One page view. Answered after Kafka acknowledged it."
                        + ENCODINGS, {"$ref": "#/components/schemas/PageView"}),
        "/events": _post(
            "Track batch", f"Up to {MAX_BATCH_EVENTS} page views, all or nothing: a JSON "
            "array, or NDJSON with `Content-Type: application/x-ndjson`." + ENCODINGS,
            {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_EVENTS,
             "items": {"$ref": "#/components/schemas/PageView"}}),
    }


def ingest_document() -> dict[str, Any]:
    """The gateway's own document (its probes included)."""
    probe = {"security": [], "responses": {"200": {"description": "OK"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pageviews ingest gateway", "version": "1",
                 "description": "Page views in, acknowledged by Kafka before the answer."},
        "paths": {**ingest_paths(), **tracker_paths(),
                  "/healthz": {"get": {"summary": "Liveness", **probe}},
                  "/readyz": {"get": {"summary": "Readiness: the Kafka producer is "
                                                 "connected (503 otherwise)", "security": [],
                                      "responses": {"200": {"description": "OK"},
                                                    "503": {"description": "Not ready"}}}},
                  "/metrics": {"get": {"summary": "Prometheus metrics", **probe}},
                  "/openapi.json": {"get": {"summary": "This document", **probe}}},
        "components": {"schemas": INGEST_SCHEMAS},
    }
