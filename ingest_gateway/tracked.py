"""What the tracker formats (Plausible, Umami) have in common: an event before the gateway
gives it an id and a visitor, and how a page URL becomes the page, host and UTM tags.

Pure: the parsers (``compat_plausible``, ``compat_umami``) build ``Tracked`` values and the
routes turn them into ``PageView``s once the visitor is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qs, unquote

from contracts.event import (
    CONTROL_CHARS_RE,
    MAX_PAGE_ID,
    MAX_USER_AGENT,
    MAX_UTM,
    RESERVED_PAGE_IDS,
    PageView,
    Props,
    clip_text,
)


@dataclass(frozen=True, slots=True)
class Tracked:
    """One event a tracker sent. ``user_id`` is the tracker's own visitor id when it sent
    one (Umami's ``id``), else None: the gateway derives one. ``ts`` None: time of receipt."""

    site_id: str
    page_id: str
    name: str | None = None
    referrer: str | None = None
    host: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    props: Props | None = None
    user_id: str | None = None
    ts: int | None = None


@dataclass(frozen=True, slots=True)
class PageOfUrl:
    page_id: str
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None


class BadPage(ValueError):
    """The URL's path cannot be a page id; the message says why."""


def page_of_url(parts: SplitResult, *, with_fragment: bool) -> PageOfUrl:
    """The page id (the URL-decoded path, ``/`` when empty, ``#fragment`` appended when
    asked) and the first ``utm_source``/``utm_medium``/``utm_campaign`` of the query, each
    cut to 200 characters. BadPage when the page id breaks the event's rules."""
    page = unquote(parts.path).rstrip() or "/"
    if with_fragment and parts.fragment:
        page = f"{page}#{unquote(parts.fragment)}"
    if len(page) > MAX_PAGE_ID:
        raise BadPage(f"path must be at most {MAX_PAGE_ID} characters")
    if CONTROL_CHARS_RE.search(page):
        raise BadPage("path must not contain control characters")
    if page in RESERVED_PAGE_IDS:
        raise BadPage(f"path {page} is reserved")
    try:
        query = parse_qs(parts.query, max_num_fields=100) if parts.query else {}
    except ValueError:  # more than 100 fields: no tags rather than a refusal
        query = {}

    def tag(name: str) -> str | None:
        values = query.get(name)
        return clip_text(values[0], MAX_UTM) if values else None

    return PageOfUrl(page, tag("utm_source"), tag("utm_medium"), tag("utm_campaign"))


def page_view(tracked: Tracked, *, event_id: str, user_id: str, user_agent: str | None,
              ts: int, received_at: int, via: str) -> PageView:
    """The event on the topic. The User-Agent is the request header's (never a payload
    field), cut to 512 characters."""
    return PageView(event_id, tracked.site_id, tracked.page_id, user_id, ts, received_at,
                    name=tracked.name, user_agent=clip_text(user_agent, MAX_USER_AGENT),
                    referrer=tracked.referrer, host=tracked.host,
                    utm_source=tracked.utm_source, utm_medium=tracked.utm_medium,
                    utm_campaign=tracked.utm_campaign, props=tracked.props, via=via)
