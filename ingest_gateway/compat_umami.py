"""Umami's ``/api/send`` and ``/api/batch`` bodies to tracked events. Pure, no I/O.

A body is ``{"type": ..., "payload": {...}}`` (a batch: an array of them). Only ``event``
carries something to count; ``identify``, ``performance`` and ``engagement`` are answered
200 and publish nothing. The payload's ``website`` (a UUID) names the site through the
registry (``Registry.site_of_umami``). ``ip``, ``userAgent`` and ``vid`` are never read: the
address is NGINX's, the User-Agent the request header's, and a stored browser id would
defeat cookieless counting. Errors have Umami's shape, ``{"error": {"message", "code",
"status"}}``. See research17/PLAN.md section 1.2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson

from contracts.event import (
    CONTROL_CHARS_RE,
    MAX_NAME,
    MAX_PROP_KEY,
    MAX_PROP_VALUE,
    MAX_PROPS,
    MAX_REFERRER,
    MAX_USER_ID,
    ValidationPolicy,
    check_ts_value,
    clip_text,
    page_host,
)
from ingest_gateway.tracked import BadPage, Tracked, page_of_url

TYPES = frozenset({"event", "identify", "performance", "engagement"})
MAX_URL = 2000
# Umami refuses names that a spreadsheet would run as a formula.
FORMULA_START = ("=", "+", "-", "@")


@dataclass(frozen=True, slots=True)
class UmamiError(Exception):
    """A refused element, answered in Umami's shape with ``status``."""

    message: str
    status: int = 400
    code: str = "bad-request"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "code": self.code, "status": self.status}}


class Ignored:
    """An element answered 200 that publishes nothing (``identify`` and the like)."""


IGNORED = Ignored()


def loads(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UmamiError("Invalid JSON body.") from None


def _text(payload: dict[str, Any], field: str, max_len: int) -> str | None:
    value = payload.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise UmamiError(f"Invalid {field}: a string of at most {max_len} characters.")
    return value


def _props(data: object) -> tuple[tuple[str, str], ...] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise UmamiError("Invalid data: an object.")
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        if value is None or isinstance(value, list | dict):
            continue  # kept only as flat strings
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if not (1 <= len(key) <= MAX_PROP_KEY and len(text) <= MAX_PROP_VALUE) \
                or CONTROL_CHARS_RE.search(key) or CONTROL_CHARS_RE.search(text):
            raise UmamiError(f"Invalid data: keys of 1 to {MAX_PROP_KEY} characters, values "
                             f"of at most {MAX_PROP_VALUE}, no control characters.")
        pairs.append((key, text))
    if len(pairs) > MAX_PROPS:
        raise UmamiError(f"Invalid data: at most {MAX_PROPS} properties.")
    return tuple(pairs) or None


def event_of_umami(element: object, site_of: Callable[[str], str | None],
                   policy: ValidationPolicy) -> Tracked | Ignored:
    """One ``{type, payload}`` element. ``site_of`` maps a website id to a registered site
    (None: not found, answered 400 "Website not found." as Umami does); a ``timestamp``
    (epoch seconds) must be one ``/track`` would accept under ``policy``. UmamiError when
    refused."""
    if not isinstance(element, dict) or not isinstance(element.get("payload"), dict):
        raise UmamiError("Invalid payload.")
    kind, payload = element.get("type"), element["payload"]
    if kind not in TYPES:
        raise UmamiError("Invalid type.")
    website = payload.get("website")
    if not isinstance(website, str):
        raise UmamiError("Invalid website.")
    site_id = site_of(website)
    if site_id is None:
        raise UmamiError("Website not found.")
    if kind != "event":
        return IGNORED
    hostname = _text(payload, "hostname", 253)
    url = _text(payload, "url", MAX_URL) or ""
    base = f"https://{hostname}/" if hostname else "https://localhost/"
    try:
        parts = urlsplit(urljoin(base, url))
        page = page_of_url(parts, with_fragment=True)  # Umami keeps pathname + hash
    except BadPage as exc:
        raise UmamiError(f"Invalid url: {exc}.") from None
    except ValueError:
        raise UmamiError("Invalid url.") from None
    name = _text(payload, "name", MAX_NAME)
    if name is not None and (name.startswith(FORMULA_START) or CONTROL_CHARS_RE.search(name)):
        raise UmamiError("Invalid name.")
    visitor = _text(payload, "id", MAX_USER_ID)
    if visitor is not None and CONTROL_CHARS_RE.search(visitor):
        raise UmamiError("Invalid id.")
    ts = payload.get("timestamp")
    if ts is not None:
        if not isinstance(ts, int) or isinstance(ts, bool) \
                or check_ts_value(ts * 1000, policy) is None:
            raise UmamiError("Invalid timestamp.")
        ts *= 1000
    return Tracked(site_id=site_id, page_id=page.page_id, name=name,
                   referrer=clip_text(payload.get("referrer"), MAX_REFERRER),
                   host=page_host(hostname or urlsplit(url).hostname),
                   utm_source=page.utm_source, utm_medium=page.utm_medium,
                   utm_campaign=page.utm_campaign, props=_props(payload.get("data")),
                   user_id=visitor, ts=ts)
