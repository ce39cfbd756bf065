"""Event ids are unique per site, never globally, on the real stack: one site posting another
site's next event id first suppresses nothing, ``--verify`` finds no difference on two sites
that share ids (from the topic and from MongoDB), and the upgrade of documents stored with a
bare event id as ``_id`` rewrites them to the (site, event id) form exactly once."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from aggregator.recovery.migrate_ids import migrate
from contracts.event import PageView
from contracts.mongo import EVENTS, META, event_document, event_key
from tests.expectations import assert_redis_matches, recount
from tests.integration.test_replay import counted, make_events, post, replay
from tests.stack import SitePool, Stack

pytestmark = pytest.mark.integration


def under(site_id: str, events: list[PageView]) -> list[PageView]:
    """The same events (ids included) posted by another site."""
    return [PageView(e.event_id, site_id, e.page_id, e.user_id, e.ts, e.received_at)
            for e in events]


async def test_a_site_posting_another_sites_event_ids_first_suppresses_none_of_its_events(
        stack: Stack, http: aiohttp.ClientSession, redis: Redis, site_pool: SitePool,
        mongo_events: AsyncCollection[dict[str, Any]]) -> None:
    rng = random.Random(15)
    victim, attacker = site_pool.take(), site_pool.take()
    planned = make_events(victim, 50, rng)  # the victim's next event ids, known to the attacker
    await post(http, stack, under(attacker, planned))
    await counted(redis, attacker, len(planned))

    await post(http, stack, planned)
    await post(http, stack, planned[:10])  # the victim's own client retries still count once
    await counted(redis, victim, len(planned))
    await assert_redis_matches(redis, victim, recount(planned))
    await assert_redis_matches(redis, attacker, recount(under(attacker, planned)))
    for site in (victim, attacker):
        stored = await mongo_events.count_documents({"site_id": site})
        assert stored == len(planned), site


async def test_verify_finds_no_difference_on_two_sites_that_share_event_ids(
        stack: Stack, http: aiohttp.ClientSession, redis: Redis, site_pool: SitePool) -> None:
    rng = random.Random(16)
    one, two = site_pool.take(), site_pool.take()
    shared = make_events(one, 300, rng)
    events_two = under(two, shared[:200]) + make_events(two, 100, rng)
    await post(http, stack, shared)
    await post(http, stack, events_two)
    await counted(redis, one, len(shared))
    await counted(redis, two, len(events_two))

    for args in (("--site", two), ("--site", one), ("--source", "mongo", "--site", two)):
        status, summary, err = await replay(stack, "--verify", *args)
        assert (status, summary["differences"]) == (0, 0), (args, err)



async def test_the_upgrade_rewrites_bare_ids_to_the_site_pair_once_and_keeps_every_field(
        scratch_db: AsyncDatabase[dict[str, Any]]) -> None:
    rng = random.Random(17)
    old = make_events("shop", 1_500, rng) + make_events("blog", 700, rng)
    legacy = [{**event_document(e, 0, i), "_id": e.event_id} for i, e in enumerate(old)]
    new = make_events("shop", 20, rng)
    events, meta = scratch_db[EVENTS], scratch_db[META]
    await events.insert_many(legacy + [event_document(e, 1, i) for i, e in enumerate(new)])
    # An interrupted earlier run: a few copied, not yet deleted.
    await events.insert_many([{**d, "_id": event_key(d["site_id"], d["_id"])}
                              for d in legacy[:30]])

    done = await migrate(events, meta)
    assert (done.rewritten, done.conflicts) == (len(legacy), 0)
    stored = {d["_id"]: d async for d in events.find({})}
    assert len(stored) == len(old) + len(new)
    for i, e in enumerate(old):
        doc = stored[event_key(e.site_id, e.event_id)]
        assert (doc["site_id"], doc["page_id"], doc["user_id"], doc["partition"],
                doc["offset"]) == (e.site_id, e.page_id, e.user_id, 0, i)
    again = await migrate(events, meta)
    assert again.already and again.rewritten == 0
