"""Query-parameter parsing with a clear 400 naming the parameter, never a 5xx."""

from __future__ import annotations

from collections.abc import Mapping

from contracts.event import CONTROL_CHARS_RE, DEFAULT_SITE, MAX_PAGE_ID, SITE_ID_RE

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_OFFSET = 10_000_000


class BadParameter(ValueError):
    """A query parameter is invalid; the handler answers 400 naming it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def site_id(query: Mapping[str, str]) -> str:
    value = query.get("site_id", DEFAULT_SITE)
    if not SITE_ID_RE.fullmatch(value):
        raise BadParameter("site_id", "must match [A-Za-z0-9._-]{1,64}")
    return value


def bounded_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, "must be an integer") from None
    if not low <= value <= high:
        raise BadParameter(name, f"must be between {low} and {high}")
    return value


def choice(query: Mapping[str, str], name: str, options: tuple[str, ...],
           default: str | None) -> str | None:
    raw = query.get(name)
    if raw is None:
        return default
    if raw not in options:
        raise BadParameter(name, "must be one of " + ", ".join(options))
    return raw


def page_id(value: str | None, name: str = "page_id") -> str | None:
    """A page id as the gateway accepts it (1 to 512 characters, no control characters)."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_PAGE_ID or CONTROL_CHARS_RE.search(value):
        raise BadParameter(name, f"must be 1 to {MAX_PAGE_ID} characters, no control characters")
    return value


def limit_offset(query: Mapping[str, str]) -> tuple[int, int]:
    return (bounded_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            bounded_int(query, "offset", 0, 0, MAX_OFFSET))


def output_format(query: Mapping[str, str], accept: str) -> str:
    """``format=json|csv``; without it, CSV when the client's Accept asks for text/csv."""
    chosen = choice(query, "format", ("json", "csv"), None)
    if chosen is not None:
        return chosen
    media = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "csv" if "text/csv" in media and "application/json" not in media else "json"


def reject_unknown(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    """A misspelt parameter (``peroid``) must not silently give all-time numbers."""
    for name in query:
        if name not in allowed:
            raise BadParameter(name, "is not a parameter of this endpoint")
