"""Plausible's Events API body (``POST /api/event``) to tracked events. Pure, no I/O.

Both trackers' shapes are read: ``@plausible-analytics/tracker`` (short names ``n u d r p i
h v``, engagement's ``sd``/``e``) and the older ``plausible-tracker`` (``h`` always, ``p`` as
a JSON string), and the long names of the documented API. Unknown keys are ignored, as
Plausible does: trackers add fields over time. Refusals carry Plausible's error shape,
``{"errors": {field: [message]}}``, and the messages Plausible itself uses where it has one.
See research17/PLAN.md section 1.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from contracts.event import (
    CONTROL_CHARS_RE,
    MAX_NAME,
    MAX_PROP_KEY,
    MAX_PROP_VALUE,
    MAX_PROPS,
    MAX_REFERRER,
    PAGEVIEW_NAME,
    SITE_ID_RE,
    Props,
    clip_text,
    page_host,
)
from ingest_gateway.tracked import BadPage, Tracked, page_of_url

MAX_URL = 2000
MAX_DOMAINS = 10  # sites one event may go to (a comma list in ``domain``)


class PlausibleError(ValueError):
    """A refused body: ``field`` and ``message`` as Plausible names them."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"errors": {self.field: [self.message]}}


def _first(raw: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in raw:
            return raw[name]
    return None


def _name(raw: Mapping[str, Any]) -> str | None:
    """The event name; None for a page view."""
    name = _first(raw, "name", "n")
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)  # Plausible casts an integer name to a string
    if not isinstance(name, str) or not name.strip():
        raise PlausibleError("event_name", "can't be blank")
    if len(name) > MAX_NAME:
        raise PlausibleError("event_name", f"should be at most {MAX_NAME} character(s)")
    if CONTROL_CHARS_RE.search(name):
        raise PlausibleError("event_name", "must not contain control characters")
    return None if name == PAGEVIEW_NAME else name


def _check_engagement(raw: Mapping[str, Any]) -> None:
    """An engagement event must carry a scroll depth (``sd``) or an engaged time (``e``), as
    Plausible requires; their values are not stored (the v2 event has no field for them)."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not (whole(raw.get("sd")) or whole(raw.get("e"))):
        raise PlausibleError("event_name", "engagement events need sd or e")


def _domains(raw: Mapping[str, Any], url_host: str | None) -> list[str]:
    """The sites: ``domain``, trimmed and without ``www.``, a comma list naming several;
    the URL's host when absent."""
    domain = _first(raw, "domain", "d")
    if domain is None:
        domain = url_host or ""
    if not isinstance(domain, str):
        raise PlausibleError("domain", "is invalid")
    sites: list[str] = []
    for item in domain.split(","):
        site = item.strip().removeprefix("www.")
        if not site:
            continue
        if not SITE_ID_RE.fullmatch(site):
            raise PlausibleError("domain", f"{site[:70]!r} is not a valid site id "
                                 "([A-Za-z0-9._-]{1,64})")
        if site not in sites:
            sites.append(site)
    if not sites:
        raise PlausibleError("domain", "can't be blank")
    if len(sites) > MAX_DOMAINS:
        raise PlausibleError("domain", f"names more than {MAX_DOMAINS} sites")
    return sites


def _scalar(value: Any) -> str | None:
    """A property value as a string; None (dropped, as Plausible does) for lists, maps,
    null and blank strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and value.strip():
        return value
    return None


def _props(raw: Mapping[str, Any]) -> Props | None:
    props = _first(raw, "props", "p", "meta", "m")
    if isinstance(props, str):  # the old plausible-tracker sends JSON.stringify(props)
        try:
            props = orjson.loads(props)
        except orjson.JSONDecodeError:
            raise PlausibleError("props", "is invalid") from None
    if props is None:
        return None
    if not isinstance(props, dict):
        raise PlausibleError("props", "is invalid")
    pairs = [(key, text) for key, value in props.items() if (text := _scalar(value)) is not None]
    if len(pairs) > MAX_PROPS:
        raise PlausibleError("props", f"must have at most {MAX_PROPS} properties")
    for key, text in pairs:
        if not (1 <= len(key) <= MAX_PROP_KEY and len(text) <= MAX_PROP_VALUE):
            raise PlausibleError("props", f"keys should have at most {MAX_PROP_KEY} characters "
                                 f"and values {MAX_PROP_VALUE} characters")
        if CONTROL_CHARS_RE.search(key) or CONTROL_CHARS_RE.search(text):
            raise PlausibleError("props", "must not contain control characters")
    return tuple(pairs) or None


def events_of_plausible(data: bytes) -> list[Tracked]:
    """The events of one ``/api/event`` body: one per site named in ``domain``.
    PlausibleError when the body is refused."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise PlausibleError("request", "Unable to parse request body as json") from None
    if not isinstance(raw, dict):
        raise PlausibleError("request", "Unable to parse request body as json")
    name = _name(raw)
    if name == "engagement":
        _check_engagement(raw)
    url = _first(raw, "url", "u")
    if not isinstance(url, str) or not url.strip():
        raise PlausibleError("url", "is required")
    if len(url.encode()) > MAX_URL:
        raise PlausibleError("url", f"must be at most {MAX_URL} bytes")
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise PlausibleError("url", "is not a valid URL") from None
    if parts.scheme.lower() == "data":
        raise PlausibleError("url", "is invalid")
    try:
        page = page_of_url(parts, with_fragment=_first(raw, "hashMode", "h") in (1, True))
    except BadPage as exc:
        raise PlausibleError("url", str(exc)) from None
    host = page_host(parts.hostname)
    sites = _domains(raw, host)
    referrer = clip_text(_first(raw, "referrer", "r"), MAX_REFERRER)
    props = _props(raw)
    return [Tracked(site_id=site, page_id=page.page_id, name=name, referrer=referrer,
                    host=host, utm_source=page.utm_source, utm_medium=page.utm_medium,
                    utm_campaign=page.utm_campaign, props=props) for site in sites]
