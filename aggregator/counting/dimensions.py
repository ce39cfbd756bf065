"""What the breakdowns count an event under: bot or not, device, browser, OS, and source.

Pure functions over the raw event's values (no I/O once built), called at aggregation time,
so a replay with newer lists recounts the past: the raw event keeps the User-Agent and the
referrer. Two lists decide: ``crawlerdetect`` (bots, crawlers, headless browsers, HTTP
libraries) with ``ua-parser`` and its native accelerator (browser, OS, device), and the
vendored referrer list in ``data/`` (``data/README.md``).

A User-Agent of ``None`` means the event came through our own ``/track`` or ``/events``,
which keep none: never a bot (and, without a referrer or UTM tag either, in no breakdown:
``aggregate``). An empty one is a bot (no browser sends none).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import ua_parser
from crawlerdetect import CrawlerDetect

UNKNOWN = "(unknown)"
DIRECT = "(direct)"
DEFAULT_UA_CACHE_SIZE = 10_000
DATA = Path(__file__).with_name("data")

# What neither list knows: Node's fetch (``node``) and undici send these by default.
_LOCAL_BOTS = re.compile(r"^(?:node|undici)(?:[/ ]|$)", re.IGNORECASE)
# Plausible's names: one browser whatever the device it runs on.
_BROWSER_NAMES = {
    "Mobile Safari": "Safari", "Mobile Safari UI/WKWebView": "Safari",
    "Chrome Mobile": "Chrome", "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome Webview", "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox", "Opera Mobile": "Opera", "Edge Mobile": "Edge",
    "Samsung Internet": "Samsung Internet", "Other": UNKNOWN,
}
_OS_NAMES = {"Mac OS X": "macOS", "Other": UNKNOWN}
_TV = re.compile(r"SmartTV|SMART-TV|GoogleTV|AppleTV|CrKey|BRAVIA|Tizen.*TV|\bTV\b|HbbTV")
_CONSOLE = re.compile(r"PlayStation|Xbox|Nintendo")
_TABLET = re.compile(r"iPad|Tablet|Kindle|Silk/|PlayBook")
_MOBILE_OS = frozenset({"Android", "iOS", "Windows Phone", "KaiOS", "BlackBerry OS"})


@dataclass(frozen=True, slots=True)
class UaFacts:
    bot: bool
    device: str
    browser: str
    os: str


NOT_A_BROWSER = UaFacts(False, UNKNOWN, UNKNOWN, UNKNOWN)  # our own formats: no UA at all
BOT = UaFacts(True, UNKNOWN, UNKNOWN, UNKNOWN)


class UaClassifier:
    """One per process (the detector and parser load their lists once), with a bounded LRU
    cache by User-Agent: a site's visitors share few distinct UAs, and a new one costs about
    2 ms. Not thread-safe (crawlerdetect keeps per-call state); the aggregator is one loop."""

    def __init__(self, cache_size: int = DEFAULT_UA_CACHE_SIZE) -> None:
        self._detector = CrawlerDetect()
        self._cache: OrderedDict[str, UaFacts] = OrderedDict()
        self._size = cache_size
        self.hits = 0
        self.misses = 0

    def classify(self, ua: str | None) -> UaFacts:
        if ua is None:
            return NOT_A_BROWSER
        known = self._cache.get(ua)
        if known is not None:
            self.hits += 1
            self._cache.move_to_end(ua)
            return known
        self.misses += 1
        facts = self._classify(ua)
        self._cache[ua] = facts
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return facts

    def _classify(self, ua: str) -> UaFacts:
        if not ua.strip() or _LOCAL_BOTS.match(ua) or self._detector.is_crawler(ua):
            return BOT
        parsed = ua_parser.parse(ua)
        device = parsed.device.family if parsed.device else ""
        if device == "Spider":
            return BOT
        agent = parsed.user_agent.family if parsed.user_agent else "Other"
        os = parsed.os.family if parsed.os else "Other"
        return UaFacts(False, device_type(ua, os, device), _BROWSER_NAMES.get(agent, agent),
                       _OS_NAMES.get(os, os))


def device_type(ua: str, os: str, device: str) -> str:
    """Desktop / Mobile / Tablet / TV / Console, as Plausible splits them; ua-parser names
    the device model only, so the class is derived from it, the OS and the UA's tokens."""
    if _CONSOLE.search(ua):
        return "Console"
    if _TV.search(ua):
        return "TV"
    if _TABLET.search(ua) or _TABLET.search(device):
        return "Tablet"
    if os in _MOBILE_OS:
        if os == "Android" and "Mobile" not in ua:
            return "Tablet"  # Android's convention: phones say Mobile, tablets do not
        return "Mobile"
    if "Mobile" in ua or "iPhone" in ua:
        return "Mobile"
    if os == "Other":
        return UNKNOWN
    return "Desktop"


def ua_of(user_agent: str | None, via: str | None) -> str | None:
    """The User-Agent to classify. The gateway stores an empty or blank header as None
    (``contracts.event.clip_text``), so a tracker format's event (``via`` set) without one
    is an empty User-Agent, a bot; only our own formats (``via`` None) have none at all."""
    if user_agent is None and via is not None:
        return ""
    return user_agent


_default: UaClassifier | None = None


def default_classifier() -> UaClassifier:
    """The process's classifier, built on first use (the aggregator, the rebuild and the
    replay share it)."""
    global _default
    if _default is None:
        _default = UaClassifier()
    return _default


def bare_host(host: str | None) -> str:
    """A host as the breakdowns compare it: lowercased, no port, no ``www.``."""
    h = (host or "").strip().lower().rstrip(".")
    return h[4:] if h.startswith("www.") else h


def load_referrers(directory: Path = DATA) -> dict[str, str]:
    """Host -> source name: the vendored list, then the local overlay on top."""
    names: dict[str, str] = {}
    for file in ("referrers.json", "referrers-overlay.json"):
        entries = json.loads((directory / file).read_text(encoding="utf-8"))
        names.update({bare_host(h): str(v["source"]) for h, v in entries.items()})
    return names


class SourceNamer:
    """The referrer source: ``(direct)`` without a referrer, ``None`` (not counted) for a
    self-referral, the list's name of the host or of a parent domain, else the bare host."""

    def __init__(self, names: dict[str, str], cache_size: int = DEFAULT_UA_CACHE_SIZE) -> None:
        self._names = names
        self._cache: dict[tuple[str, str | None], str | None] = {}
        self._size = cache_size

    def source_of(self, referrer: str | None, page_host: str | None) -> str | None:
        if not referrer:
            return DIRECT
        key = (referrer, page_host)
        if key in self._cache:
            return self._cache[key]
        if len(self._cache) >= self._size:  # bounded: start afresh (rare; cheap to refill)
            self._cache.clear()
        found = self._cache[key] = self._source_of(referrer, page_host)
        return found

    def _source_of(self, referrer: str, page_host: str | None) -> str | None:
        if not referrer.strip():
            return DIRECT
        text = referrer.strip()
        try:
            host = urlsplit(text if "//" in text else "//" + text).hostname
        except ValueError:
            host = None
        ref = bare_host(host)
        if not ref:
            return DIRECT
        if page_host is not None and ref == bare_host(page_host):
            return None
        parts = ref.split(".")
        for i in range(len(parts) - 1):
            name = self._names.get(".".join(parts[i:]))
            if name is not None:
                return name
        return ref


_default_namer: SourceNamer | None = None


def default_namer() -> SourceNamer:
    global _default_namer
    if _default_namer is None:
        _default_namer = SourceNamer(load_referrers())
    return _default_namer


def list_versions() -> dict[str, str]:
    """The lists' versions, for ``/metrics``: which lists a count (or a replay) used."""
    digest = hashlib.sha256()
    for file in ("referrers.json", "referrers-overlay.json"):
        digest.update((DATA / file).read_bytes())
    return {"crawlerdetect": importlib.metadata.version("crawlerdetect"),
            "ua_parser_builtins": importlib.metadata.version("ua-parser-builtins"),
            "referrers_sha256": digest.hexdigest()[:16]}


def utm_value(value: str | None) -> str | None:
    """A UTM value as sent; none (or blank) is not counted in that dimension."""
    if value is None or not value.strip():
        return None
    return value


SELF_REFERRAL = "(self)"  # stored for the MongoDB fallback; never counted


def stored_dims(user_agent: str | None, referrer: str | None, host: str | None,
                classifier: UaClassifier | None = None, namer: SourceNamer | None = None
                ) -> dict[str, object] | None:
    """The classification written with the raw event in MongoDB (``dims``), for the
    fallback's ``$group``, since FerretDB cannot parse a User-Agent. None (nothing
    stored) when there is no User-Agent and no referrer: the defaults are then implied
    (not a bot, ``(direct)``, ``(unknown)``). The fallback answers with the lists of write
    time; a replay recounts Redis only."""
    if user_agent is None and referrer is None:
        return None
    facts = (classifier or default_classifier()).classify(user_agent)
    if facts.bot:
        return {"bot": True}
    source = (namer or default_namer()).source_of(referrer, host)
    return {"src": SELF_REFERRAL if source is None else source, "dev": facts.device,
            "brw": facts.browser, "os": facts.os}
