"""The page-view event, version 2: its validation and its wire codec.

The gateway validates what clients send and encodes the result for Kafka; the aggregator
and the replay decode it again. Validation is pure: the clock and the id factory are
passed in, so tests control them.

Version 2 adds optional fields that only the tracker formats (Plausible's Events API,
Umami's ``/api/send``) fill: the event name, the User-Agent, the referrer, the page host, the
UTM tags of the page URL, custom properties, and which format the event came in. Each is
omitted from the record when None, so an event of our own ``/track`` encodes as in version 1
except for ``v``; records of either version decode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contracts.aggregates import OVERFLOW_PAGE

SCHEMA_VERSION = 2
# Record versions ``decode_event`` reads: version 1 records stay on the topic for replays.
DECODABLE_VERSIONS = frozenset({1, 2})
DEFAULT_SITE = "default"
MAX_PAGE_ID = 512
MAX_USER_ID = 128
MAX_EVENT_ID = 128
MAX_FUTURE_MS = 5 * 60 * 1000
DEFAULT_LATE_WINDOW_MS = 7 * 24 * 3600 * 1000
# The instants an event may carry at all, whatever the late window: from the Unix epoch to
# the last millisecond a ``datetime`` (and so a stored MongoDB document) can represent.
MIN_TS_MS = 0
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

SITE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# RFC 3339 section 5.6 date-time: seconds required, optional fraction, Z or a numeric offset.
# ``datetime.fromisoformat`` alone also takes ISO 8601 forms such as week dates or basic format.
RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The control characters no text field may hold (C0, DEL and C1), as a regex class body.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"
CONTROL_CHARS_RE = re.compile(f"[{CONTROL_CHARS}]")
KNOWN_FIELDS = frozenset({"page_id", "user_id", "site_id", "event_id", "ts"})
# Page ids the gateway refuses: the aggregator's own overflow page, so a client cannot make a
# site look over its page quota. A record that holds one anyway (written by an older gateway)
# decodes and counts under that page, which is where the quota would put it too.
RESERVED_PAGE_IDS = frozenset({OVERFLOW_PAGE})

# Version 2's optional fields. Texts a tracker cannot help (its User-Agent, the referrer, the
# URL's UTM tags) are cut to these lengths at the gateway (``clip_text``); the rest are refused
# when too long. A record over any limit is undecodable.
MAX_NAME = 120  # Plausible's own limit for event names
MAX_USER_AGENT = 512
MAX_REFERRER = 2000  # Plausible slices referrers to 2000 characters
MAX_HOST = 253  # the longest DNS name
MAX_UTM = 200
MAX_PROPS = 30
MAX_PROP_KEY = 300
MAX_PROP_VALUE = 2000
MAX_SHARDS = 16  # slots one hot site's aggregates may be split over (``contracts.keys``)
PAGEVIEW_NAME = "pageview"  # the trackers' name for a page view; stored as ``name`` None
VIA_FORMATS = frozenset({"plausible", "umami"})
# Text fields of version 2 with their limits, in record order.
EXTRA_TEXT_FIELDS: tuple[tuple[str, int], ...] = (
    ("name", MAX_NAME), ("user_agent", MAX_USER_AGENT), ("referrer", MAX_REFERRER),
    ("host", MAX_HOST), ("utm_source", MAX_UTM), ("utm_medium", MAX_UTM),
    ("utm_campaign", MAX_UTM))
Props = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PageView:
    """A validated event; ``ts`` and ``received_at`` are epoch milliseconds (UTC).

    The fields after ``received_at`` (version 2) are optional and None for events of our own
    ``/track`` and ``/events``. ``name`` None is a page view; any other name is an event that
    is not one (Plausible's ``engagement``, custom events). ``props`` is a tuple of
    (key, value) pairs in the order sent, so the event stays immutable and hashable.
    """

    event_id: str
    site_id: str
    page_id: str
    user_id: str
    ts: int
    received_at: int
    name: str | None = None
    user_agent: str | None = None
    referrer: str | None = None
    host: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    props: Props | None = None
    via: str | None = None
    # How many shards the site's aggregates were split over when the gateway accepted the
    # event (``contracts.keys.unit_of``): stamped once, so a redelivery or a rebuild routes
    # the event exactly where live counting did, whatever the registry says by then.
    shards: int = 1

    @property
    def is_pageview(self) -> bool:
        return self.name is None

    @property
    def kafka_key(self) -> bytes:
        """Spreads load over partitions and keeps one visitor's events in order."""
        return f"{self.site_id}:{self.user_id}".encode()


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    reason: str
    index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"field": self.field, "reason": self.reason}
        if self.index is not None:
            detail = {"index": self.index, **detail}
        return detail


class InvalidEvent(ValueError):
    """The input is not a valid v1 event; ``errors`` names every offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What the clock says and how far back in time an event may be."""

    now_ms: int
    late_window_ms: int = DEFAULT_LATE_WINDOW_MS


def _check_text(raw: Mapping[str, Any], field: str, max_len: int, *, required: bool,
                no_control: bool, errors: list[FieldError]) -> str | None:
    if field not in raw:
        if required:
            errors.append(FieldError(field, "is required"))
        return None
    value = raw[field]
    if not isinstance(value, str):
        errors.append(FieldError(field, "must be a string"))
        return None
    if not 1 <= len(value) <= max_len:
        errors.append(FieldError(field, f"must be 1 to {max_len} characters"))
        return None
    if no_control and CONTROL_CHARS_RE.search(value):
        errors.append(FieldError(field, "must not contain control characters"))
        return None
    return value


def parse_ts(value: object) -> int:
    """Epoch milliseconds from an RFC 3339 string or an integer of epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 date-time or epoch milliseconds")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 64 and RFC3339_RE.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError("is not a valid RFC 3339 date-time") from None
        return (moment - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time with seconds and a time zone, "
                         "e.g. 2026-11-28T10:00:00Z")
    raise ValueError("must be an RFC 3339 date-time or epoch milliseconds")


def _check_ts(raw: Mapping[str, Any], policy: ValidationPolicy,
              errors: list[FieldError]) -> int | None:
    if "ts" not in raw:
        return policy.now_ms
    try:
        ts = parse_ts(raw["ts"])
    except ValueError as exc:
        errors.append(FieldError("ts", str(exc)))
        return None
    reason = _ts_refusal(ts, policy)
    if reason is not None:
        errors.append(FieldError("ts", reason))
        return None
    return ts


def check_ts_value(value: object, policy: ValidationPolicy) -> int | None:
    """A sent ``ts`` as epoch milliseconds, or None where ``validate_event`` refuses it."""
    try:
        ts = parse_ts(value)
    except ValueError:
        return None
    return ts if _ts_refusal(ts, policy) is None else None


def _ts_refusal(ts: int, policy: ValidationPolicy) -> str | None:
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        return "is outside 1970-01-01 to 9999-12-31"
    if ts > policy.now_ms + MAX_FUTURE_MS:
        return "is more than 5 minutes in the future"
    if ts < policy.now_ms - policy.late_window_ms:
        return f"is older than the late window ({policy.late_window_ms / 86_400_000:g} days)"
    return None


def validate_event(raw: object, policy: ValidationPolicy,
                   new_event_id: Callable[[], str]) -> PageView:
    """Turn one decoded JSON value into a PageView, or raise InvalidEvent naming every field."""
    if not isinstance(raw, dict):
        raise InvalidEvent([FieldError("", "event must be a JSON object")])
    errors: list[FieldError] = []
    for field in sorted(set(raw) - KNOWN_FIELDS, key=str)[:10]:
        errors.append(FieldError(str(field)[:64], "is not a field of the v1 event"))
    page_id, user_id, event_id, site_id = _check_ids(raw, errors, event_id_required=False,
                                                   default_site=DEFAULT_SITE)
    if page_id in RESERVED_PAGE_IDS:
        errors.append(FieldError("page_id", f"{page_id} is reserved: it holds the views of "
                                 "pages past the site's page quota"))
    ts = _check_ts(raw, policy, errors)
    if errors:
        raise InvalidEvent(errors)
    assert page_id is not None and user_id is not None and ts is not None
    return PageView(event_id=event_id or new_event_id(), site_id=site_id, page_id=page_id,
                    user_id=user_id, ts=ts, received_at=policy.now_ms)


def _check_ids(raw: Mapping[str, Any], errors: list[FieldError], *, event_id_required: bool,
               default_site: str | None) -> tuple[str | None, str | None, str | None, Any]:
    """page_id, user_id, event_id and site_id by the v1 rules, each None (or as sent, for the
    site) when invalid: the gateway and the record decoder apply the same ones."""
    page_id = _check_text(raw, "page_id", MAX_PAGE_ID, required=True, no_control=True,
                          errors=errors)
    # No control characters in any text field: PostgreSQL (FerretDB's storage) cannot store
    # NUL at all, and a record it cannot store must be refused here, not crash the aggregator.
    user_id = _check_text(raw, "user_id", MAX_USER_ID, required=True, no_control=True,
                          errors=errors)
    event_id = _check_text(raw, "event_id", MAX_EVENT_ID, required=event_id_required,
                           no_control=True, errors=errors)
    site_id = raw.get("site_id", default_site)
    if not isinstance(site_id, str) or not SITE_ID_RE.fullmatch(site_id):
        errors.append(FieldError("site_id", "must match [A-Za-z0-9._-]{1,64}"))
    return page_id, user_id, event_id, site_id


def validate_batch(raws: list[object], policy: ValidationPolicy,
                   new_event_id: Callable[[], str]) -> list[PageView]:
    """All or nothing: every event valid, or InvalidEvent listing each bad one by index."""
    events: list[PageView] = []
    errors: list[FieldError] = []
    for index, raw in enumerate(raws):
        try:
            events.append(validate_event(raw, policy, new_event_id))
        except InvalidEvent as exc:
            errors.extend(FieldError(e.field, e.reason, index) for e in exc.errors)
    if errors:
        raise InvalidEvent(errors)
    return events


def clip_text(value: object, max_len: int) -> str | None:
    """A text a client cannot help sending long or dirty (User-Agent, referrer, UTM tags),
    made storable: control characters removed, surrounding space trimmed, cut to ``max_len``;
    None when nothing is left or it is not a string."""
    if not isinstance(value, str):
        return None
    cleaned = CONTROL_CHARS_RE.sub("", value).strip()[:max_len]
    return cleaned or None


def page_host(host: object) -> str | None:
    """A page's host as stored: lowercased, a leading ``www.`` and a port removed; None when
    it is empty or longer than a DNS name."""
    if not isinstance(host, str):
        return None
    name = CONTROL_CHARS_RE.sub("", host).strip().lower()
    if name.startswith("[") and "]" in name:  # an IPv6 literal keeps its colons
        name = name[:name.index("]") + 1]
    else:
        name = name.partition(":")[0]
    name = name.removeprefix("www.")
    return name if 1 <= len(name) <= MAX_HOST else None


def extra_errors(event: PageView) -> list[FieldError]:
    """Version 2's rules for the optional fields of a built event (the gateway's parsers build
    events through these rules; ``decode_event`` applies them to records)."""
    raw: dict[str, Any] = {f: getattr(event, f) for f, _ in EXTRA_TEXT_FIELDS}
    raw["props"] = None if event.props is None else dict(event.props)
    raw["via"] = event.via
    errors: list[FieldError] = []
    _check_extras(raw, errors)
    return errors


def _check_extras(raw: Mapping[str, Any], errors: list[FieldError]) -> dict[str, Any]:
    """The version 2 fields of a record as ``PageView`` keyword arguments; a null field is
    absent. Each violation is appended to ``errors``."""
    extras: dict[str, Any] = {}
    for field, max_len in EXTRA_TEXT_FIELDS:
        if raw.get(field) is not None:
            extras[field] = _check_text(raw, field, max_len, required=False, no_control=True,
                                        errors=errors)
    if extras.get("name") == PAGEVIEW_NAME:
        extras["name"] = None
    host = extras.get("host")
    if host is not None and page_host(host) != host:
        errors.append(FieldError("host", "must be a lowercase host without www. or a port"))
    via = raw.get("via")
    if via is not None:
        if via in VIA_FORMATS:
            extras["via"] = via
        else:
            errors.append(FieldError("via", f"must be one of {sorted(VIA_FORMATS)}"))
    if raw.get("props") is not None:
        extras["props"] = check_props(raw["props"], errors)
    shards = raw.get("shards")
    if shards is not None:
        if type(shards) is int and 1 <= shards <= MAX_SHARDS:
            extras["shards"] = shards
        else:
            errors.append(FieldError("shards", f"must be an integer from 1 to {MAX_SHARDS}"))
    return extras


def check_props(value: object, errors: list[FieldError]) -> Props | None:
    """Custom properties: an object of at most 30 string keys (1-300 characters) to string
    values (at most 2000 characters), no control characters."""
    if not isinstance(value, dict):
        errors.append(FieldError("props", "must be an object of strings"))
        return None
    if len(value) > MAX_PROPS:
        errors.append(FieldError("props", f"must have at most {MAX_PROPS} properties"))
        return None
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        if not (isinstance(key, str) and isinstance(item, str)
                and 1 <= len(key) <= MAX_PROP_KEY and len(item) <= MAX_PROP_VALUE
                and not CONTROL_CHARS_RE.search(key) and not CONTROL_CHARS_RE.search(item)):
            errors.append(FieldError(
                "props", f"keys must be 1 to {MAX_PROP_KEY} characters and values strings of "
                f"at most {MAX_PROP_VALUE}, without control characters"))
            return None
        pairs.append((key, item))
    return tuple(pairs)


def encode_event(event: PageView) -> bytes:
    """The Kafka record value; version 2 fields only when set."""
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION, "event_id": event.event_id, "site_id": event.site_id,
        "page_id": event.page_id, "user_id": event.user_id, "ts": event.ts,
        "received_at": event.received_at,
    }
    return orjson.dumps(record | v2_fields(event))


def v2_fields(event: PageView) -> dict[str, Any]:
    """Version 2's fields that are set, as the topic and the raw store both keep them: an
    event of our own formats (none set) is written as in version 1."""
    fields: dict[str, Any] = {}
    for field, _ in EXTRA_TEXT_FIELDS:
        value = getattr(event, field)
        if value is not None:
            fields[field] = value
    if event.props is not None:
        fields["props"] = dict(event.props)
    if event.via is not None:
        fields["via"] = event.via
    if event.shards != 1:
        fields["shards"] = event.shards
    return fields


class UndecodableRecord(ValueError):
    """A Kafka record that is not a v1 or v2 event; it belongs in the dead-letter topic."""


def decode_event(value: bytes | None) -> PageView:
    """Decode a Kafka record value written by ``encode_event``, checking it by the gateway's
    own rules (lengths, control characters, site id, time range): anything on the topic may
    have been written by something other than our gateway, and a record that passes here must
    not crash the aggregator later. Only the late window is not applied: it is the gateway's
    setting at receipt, and a replay reads old records."""
    if value is None:
        raise UndecodableRecord("record has no value")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise UndecodableRecord(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UndecodableRecord("not a JSON object")
    version = raw.get("v")
    if type(version) is not int or version not in DECODABLE_VERSIONS:
        raise UndecodableRecord(f"unsupported schema version {version!r}")
    errors: list[FieldError] = []
    page_id, user_id, event_id, site_id = _check_ids(raw, errors, event_id_required=True,
                                                   default_site=None)
    received_at = _stored_ms(raw, "received_at", MAX_TS_MS, errors)
    latest_ts = MAX_TS_MS if received_at is None else min(MAX_TS_MS, received_at + MAX_FUTURE_MS)
    ts = _stored_ms(raw, "ts", latest_ts, errors)
    # A version 1 record has none of version 2's fields; one that does was not written by
    # a version 1 gateway and is checked like any other.
    extras = _check_extras(raw, errors)
    if errors:
        raise UndecodableRecord("; ".join(f"{e.field}: {e.reason}" for e in errors))
    assert event_id and page_id and user_id and isinstance(site_id, str)
    assert ts is not None and received_at is not None
    return PageView(event_id=event_id, site_id=site_id, page_id=page_id, user_id=user_id,
                    ts=ts, received_at=received_at, **extras)


def _stored_ms(raw: Mapping[str, Any], field: str, latest: int,
               errors: list[FieldError]) -> int | None:
    """An epoch-millisecond field of a record, from the Unix epoch to ``latest``."""
    value = raw.get(field)
    if type(value) is not int:
        errors.append(FieldError(field, "must be an integer of epoch milliseconds"))
        return None
    if not MIN_TS_MS <= value <= latest:
        errors.append(FieldError(field, f"must be between {MIN_TS_MS} and {latest}"))
        return None
    return value
