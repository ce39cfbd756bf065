"""Query-parameter parsing with a clear 400 naming the parameter, never a 5xx."""

from __future__ import annotations

from collections.abc import Mapping

from contracts.event import DEFAULT_SITE, SITE_ID_RE


class BadParameter(ValueError):
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
