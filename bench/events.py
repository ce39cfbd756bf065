"""Synthetic page views for benchmarks: realistic shape (a few sites, a long tail of
pages, many visitors), unique ids, timestamps within the last minutes. Pure and seeded,
so a run is reproducible; the clock is passed in.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from contracts.event import PageView, encode_event


def page_views(count: int, sites: list[str], now_ms: int, seed: int = 7, pages: int = 200,
               users: int = 20_000, spread_ms: int = 5 * 60_000) -> Iterator[PageView]:
    """``count`` events over ``sites``; pages follow a rough power law (a few popular). The
    event ids are new every time: the same ids sent again in a later run on the same stack
    would be client retries (not counted), and the benchmark would measure dropping them."""
    rng, ids = random.Random(seed), random.Random()
    for _ in range(count):
        page = int(pages * rng.random() ** 3)
        yield PageView(event_id=str(uuid.UUID(int=ids.getrandbits(128), version=4)),
                       site_id=rng.choice(sites), page_id=f"/bench/page-{page}",
                       user_id=f"user-{rng.randrange(users)}",
                       ts=now_ms - rng.randrange(spread_ms), received_at=now_ms)


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
