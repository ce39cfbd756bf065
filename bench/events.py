"""Synthetic page views for benchmarks: realistic shape (a few sites, a long tail of
pages, many visitors), unique ids, timestamps within the last minutes. Pure and seeded,
so a run is reproducible; the clock is passed in.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
import zlib
from collections.abc import Iterator

from contracts.event import PageView, encode_event

# What a tracker (Plausible's, Umami's) adds to a page view: real browsers' User-Agents (no
# bots: a bot is not a view, and the seeds are checked by their views), referrers (None:
# direct; the rest a mix of search, social and sites) and, on one view in ten, UTM tags.
TRACKER_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
)
TRACKER_REFERRERS = (
    None, None, None, None, "https://www.google.com/", "https://www.google.com/",
    "https://www.bing.com/", "https://duckduckgo.com/", "https://news.ycombinator.com/item",
    "https://t.co/x1", "https://www.facebook.com/", "https://www.reddit.com/r/python/",
    "https://chatgpt.com/", "https://blog.example.org/a-post")


def as_tracker_view(event: PageView, rng: random.Random) -> PageView:
    """``event`` as a tracker sends it: a User-Agent and referrer by the visitor's hash
    (one visitor keeps one browser), sometimes UTM tags."""
    visitor = zlib.crc32(event.user_id.encode())
    tagged = rng.random() < 0.1
    return dataclasses.replace(
        event, user_agent=TRACKER_USER_AGENTS[visitor % len(TRACKER_USER_AGENTS)],
        referrer=rng.choice(TRACKER_REFERRERS), host="bench.example", via="plausible",
        utm_source="newsletter" if tagged else None, utm_medium="email" if tagged else None,
        utm_campaign=f"week-{rng.randrange(10)}" if tagged else None)


def page_views(count: int, sites: list[str], now_ms: int, seed: int = 7, pages: int = 200,
               users: int = 20_000, spread_ms: int = 5 * 60_000, tracker: bool = False
               ) -> Iterator[PageView]:
    """``count`` events over ``sites``; pages follow a rough power law (a few popular); as
    ``/track`` sends them, or with ``tracker`` as Plausible's tracker does (then every view
    also counts in the breakdowns). The event ids are new every time: the same ids sent
    again in a later run on the same stack would be client retries (not counted), and the
    benchmark would measure dropping them."""
    rng, ids = random.Random(seed), random.Random()
    for _ in range(count):
        page = int(pages * rng.random() ** 3)
        event = PageView(event_id=str(uuid.UUID(int=ids.getrandbits(128), version=4)),
                         site_id=rng.choice(sites), page_id=f"/bench/page-{page}",
                         user_id=f"user-{rng.randrange(users)}",
                         ts=now_ms - rng.randrange(spread_ms), received_at=now_ms)
        yield as_tracker_view(event, rng) if tracker else event


def gateway_record_size() -> tuple[int, int]:
    """(value bytes, key bytes) of one Kafka record as the gateway writes it for the wrk
    scripts' events (site ``bench-ingest-<run>-events-c<N>``, a UUIDv7 id assigned by the
    gateway): Kafka's producer tool is run with records of their sum, since it sends no
    keys but the gateway's keys travel in every record too."""
    sample = PageView(event_id="0190f5a4-7b1c-7aa8-9fcb-dabe4e44e77e",
                      site_id="bench-ingest-0a1b2c3d-events-c16", page_id="/bench/42",
                      user_id="u4242", ts=1_780_000_000_000, received_at=1_780_000_000_000)
    return len(encode_event(sample)), len(sample.kafka_key)


def gateway_payloads(count: int = 1000, now_ms: int = 1_780_000_000_000) -> list[bytes]:
    """Kafka record values as the gateway writes them for the wrk scripts' ``/events``
    bodies (pages ``/bench/0..99``, users ``u0..u4999``, UUID ids): the payloads Kafka's
    producer tool sends for the limit, so its records are ours byte for byte."""
    rng = random.Random(11)
    return [encode_event(PageView(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        site_id="bench-ingest-0a1b2c3d-events-c16", page_id=f"/bench/{i % 100}",
        user_id=f"u{i % 5000}", ts=now_ms, received_at=now_ms)) for i in range(count)]
