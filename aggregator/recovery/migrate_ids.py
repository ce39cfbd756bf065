"""``python -m aggregator.recovery.migrate_ids``: the one-off upgrade of raw events stored
with the bare event id as ``_id`` to the (site, event id) identity (``contracts.mongo``).

Why it is needed: live counting tells a client retry from a new event by a duplicate
``_id``. A retry of an event stored under its bare id would not collide with the pair form
and would count twice, and the MongoDB fallback would count an event stored under both forms
twice. So the old documents are rewritten before the new aggregators count: ``make up``
runs this before it starts them (a no-op once done); elsewhere, run it with the aggregators
stopped.

Idempotent and resumable: each old document is copied under its new ``_id`` (a duplicate
key means an earlier, interrupted run copied it already), then deleted. A bare ``_id`` never
holds the separator, so old and new documents are told apart exactly. When no old document
is left a marker document (collection ``meta``) records it, so later runs cost one lookup.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from contracts.mongo import EVENT_KEY_SEPARATOR, EVENTS, META, event_key
from contracts.settings import Backends

MARKER_ID = "event_identity"
BATCH = 1000
DELETE_CONCURRENCY = 16
DUPLICATE_KEY = 11000


@dataclass
class Migrated:
    already: bool = False  # the marker said so: nothing was read
    scanned: int = 0
    rewritten: int = 0
    conflicts: int = 0  # already stored under the new _id from another (partition, offset)


async def migrate(events: AsyncCollection[dict[str, Any]], meta: AsyncCollection[dict[str, Any]],
                  progress: Callable[[Migrated], None] | None = None) -> Migrated:
    """Rewrite every bare-``_id`` event; may take minutes on millions (one delete per event:
    FerretDB answers an ``$in`` filter by scanning)."""
    done = Migrated()
    if await meta.find_one({"_id": MARKER_ID}) is not None:
        done.already = True
        return done
    old: list[dict[str, Any]] = []
    async for doc in events.find({}, batch_size=BATCH):
        done.scanned += 1
        if not isinstance(doc["_id"], str) or EVENT_KEY_SEPARATOR in doc["_id"]:
            continue
        old.append(doc)
        if len(old) >= BATCH:
            await _rewrite(events, old, done)
            old = []
            if progress is not None:
                progress(done)
    if old:
        await _rewrite(events, old, done)
    await meta.update_one({"_id": MARKER_ID},
                          {"$set": {"form": "site_id \\x1f event_id",
                                    "rewritten": done.rewritten, "at_ms": int(time.time() * 1000)}},
                          upsert=True)
    return done


async def _rewrite(events: AsyncCollection[dict[str, Any]], old: list[dict[str, Any]],
                   done: Migrated) -> None:
    copies = [{**doc, "_id": event_key(doc["site_id"], doc["_id"])} for doc in old]
    duplicate_at: set[int] = set()
    try:
        await events.insert_many(copies, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(err.get("code") != DUPLICATE_KEY for err in errors):
            raise
        duplicate_at = {int(err["index"]) for err in errors}
    for i in duplicate_at:  # copied by an interrupted run, or stored anew meanwhile
        stored = await events.find_one({"_id": copies[i]["_id"]}, {"partition": 1, "offset": 1})
        if stored is not None and (stored.get("partition"), stored.get("offset")) != (
                old[i].get("partition"), old[i].get("offset")):
            done.conflicts += 1
    limit = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete(document_id: str) -> None:
        async with limit:
            await events.delete_one({"_id": document_id})

    await asyncio.gather(*(delete(doc["_id"]) for doc in old))
    done.rewritten += len(old)


async def main_async() -> Migrated:
    backends = Backends.from_env(os.environ)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backends.mongo_url)
    started = time.monotonic()

    def progress(done: Migrated) -> None:
        print(f"{done.rewritten:,} events rewritten ({done.scanned:,} read) in "
              f"{time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)

    try:
        db = client[backends.mongo_db]
        return await migrate(db[EVENTS], db[META], progress)
    finally:
        await client.close()


def main() -> int:
    done = asyncio.run(main_async())
    sys.stdout.write(orjson.dumps({"already_done": done.already, "scanned": done.scanned,
                                   "rewritten": done.rewritten,
                                   "conflicts": done.conflicts}).decode() + "\n")
    if done.conflicts:
        print(f"{done.conflicts} events were stored under both forms from different Kafka "
              "positions (counted twice before the upgrade finished): run `make replay` to "
              "recount", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
