"""``python -m bench.mongo_ceiling``: one process of the MongoDB-wire insert ceiling.

The drain benchmark compares K aggregator processes, each writing with M concurrent
``insert_many(ordered=False)`` chunks, with this: K processes of M concurrent writers each,
inserting the aggregator's event documents (``contracts.mongo.event_document``, chunks of
the aggregator's batch size / M) into one collection with the events indexes, as fast as
the server takes them. Nothing else is done per document (a template document gets a
fresh ``_id``), so what it reaches is the server's ceiling for that many writers, not the
client's. Each process connects and builds its documents, prints ``ready``, then reads
the common start time (wall clock) from stdin, so all start together however slowly they
started; each stops at start + ``--seconds`` and prints one JSON line: documents inserted,
seconds, errors. Started and stopped by ``bench.limits.mongo_ceiling``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bench.events import page_views
from contracts.mongo import EVENTS, event_document


def templates(count: int, site: str) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return [event_document(e, 0, i) for i, e in enumerate(page_views(count, [site], now_ms))]


async def writer(collection: Any, docs: list[dict[str, Any]], prefix: str, stop_at: float,
                 counts: list[int]) -> None:
    """Insert chunks of fresh copies of ``docs`` until ``stop_at`` (wall clock)."""
    n = 0
    while time.time() < stop_at:
        chunk = [{**d, "_id": f"{prefix}-{n + i}", "offset": n + i} for i, d in enumerate(docs)]
        n += len(chunk)
        try:
            await collection.insert_many(chunk, ordered=False)
            counts[0] += len(chunk)
        except PyMongoError:
            counts[1] += 1


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        args.url, maxPoolSize=max(10, 2 * args.writers))
    try:
        collection = client[args.db][args.collection]
        docs = templates(args.chunk, args.site)
        await client.admin.command("ping")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        wait = start_at - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        counts = [0, 0]  # documents inserted, failed calls
        stop_at = start_at + args.seconds
        started = time.time()
        await asyncio.gather(*(writer(collection, docs, f"{args.prefix}-w{w}", stop_at, counts)
                               for w in range(args.writers)))
        return {"inserted": counts[0], "errors": counts[1],
                "seconds": time.time() - max(started, start_at)}
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mongo_ceiling", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--collection", default=EVENTS)
    p.add_argument("--writers", type=int, default=1)
    p.add_argument("--chunk", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--prefix", required=True)
    p.add_argument("--site", default="bench-mongo-ceiling")
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
