"""FerretDB on PostgreSQL: lookups by ``_id`` and by site use the lookup indexes, also after
a collection is dropped and re-created.

FerretDB pushes ``{_id: x}`` down as ``_jsonb->'_id' @> x``, which its own btree index cannot
serve; ``infra/ferretdb/lookup_postgresql.go`` adds GIN indexes that can. A helper that
remembered which tables it had indexed by name would never index a re-created collection
again (the table keeps its name), and every redo lookup would scan it. The plan FerretDB's
``explain`` returns is PostgreSQL's own, so it shows which index the real query uses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from contracts.mongo import event_key
from tests.stack import Stack, eventually, read_env_file

pytestmark = pytest.mark.integration
DOCS = 3_000  # enough rows that PostgreSQL prefers an index it can use over a scan


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    if "POSTGRES_URL" not in read_env_file(stack.directory / "stack.env"):
        pytest.skip("FerretDB does not run on this stack's PostgreSQL (MONGO_BACKEND=sqlite "
                    "or an external MongoDB)")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_url)
    db = client[f"idx_{uuid.uuid4().hex[:12]}"]
    yield db
    await client.drop_database(db.name)
    await client.close()


async def fill(db: AsyncDatabase[dict[str, Any]], name: str) -> None:
    await db[name].insert_many([{"_id": event_key(f"s-{i % 100}", f"e-{i}"),
                                 "site_id": f"s-{i % 100}"}
                                for i in range(DOCS)], ordered=False)


async def plan(db: AsyncDatabase[dict[str, Any]], name: str, query: dict[str, Any]) -> str:
    explained = await db.command("explain", {"find": name, "filter": query})
    return json.dumps(explained["queryPlanner"])


async def uses_lookup_index(db: AsyncDatabase[dict[str, Any]], name: str,
                            query: dict[str, Any]) -> bool:
    """Whether PostgreSQL's plan for the pushed-down filter scans one of our ``pv_`` indexes."""
    return '"Index Name": "pv_' in await plan(db, name, query)


async def test_lookups_by_id_and_site_use_an_index_again_after_the_collection_is_recreated(
        database: AsyncDatabase[dict[str, Any]]) -> None:
    name = "events"
    # The (site, event id) _id the aggregator looks up (contracts.mongo.event_key).
    by_id, by_site = {"_id": event_key("s-34", "e-1234")}, {"site_id": "s-42"}
    await fill(database, name)
    await eventually(lambda: uses_lookup_index(database, name, by_id), timeout_s=20,
                     interval_s=0.2, message="_id lookup through the pv_ index")
    # The helper builds the two indexes one after the other, each concurrently.
    await eventually(lambda: uses_lookup_index(database, name, by_site), timeout_s=20,
                     interval_s=0.2, message="site lookup through the pv_ index")

    await database.drop_collection(name)
    await fill(database, name)  # the same name, so the same table name

    assert await database[name].find_one(by_id) == {**by_id, "site_id": "s-34"}
    await eventually(lambda: uses_lookup_index(database, name, by_id), timeout_s=20,
                     interval_s=0.2, message="_id lookup through the re-created pv_ index")
    await eventually(lambda: uses_lookup_index(database, name, by_site), timeout_s=20,
                     interval_s=0.2, message="site lookup through the re-created pv_ index")
