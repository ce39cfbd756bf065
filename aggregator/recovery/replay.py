"""``python -m aggregator.recovery.replay``: rebuild the Redis aggregates from the Kafka topic, or
audit them (``--verify``), on a running system.

The rebuild fills a new generation while the live aggregators keep counting and the query
API keeps answering from the current one, then switches each site atomically and deletes
the old generation (see ``aggregator.recovery.rebuild``). Interrupting it (Ctrl-C, SIGKILL) leaves
the current generation untouched; run it again. Progress goes to stderr, a JSON summary to
stdout. Exit status: 0 done (verify: no difference), 1 verify found differences, 2 usage,
3 verify could not settle a busy site, 4 Redis lost the generation midway (run again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from pymongo import AsyncMongoClient

from aggregator.page_quota import quota_of
from aggregator.recovery.history import committed_offsets
from aggregator.recovery.rebuild import MongoHistory, Outcome, Rebuild, RebuildLost
from aggregator.recovery.topic_reader import TopicReader
from contracts.event import SITE_ID_RE
from contracts.keys import site_of_unit
from contracts.mongo import EVENTS
from contracts.redis_client import connect_redis_client
from contracts.registry import RegistryCache
from contracts.settings import AggregatorSettings

EXIT_DIFFERENT, EXIT_UNSETTLED, EXIT_LOST = 1, 3, 4


class ProgressBar:
    """Records done, rate and time left on one redrawn line (a line every few seconds when
    stderr is not a terminal, so CI logs stay short)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        """``total`` < 0: unknown (events read from MongoDB)."""
        now = time.monotonic()
        if now - self._last < (0.2 if self._tty else 5.0) and (total < 0 or done < total):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        rate = done / elapsed
        if total < 0:
            self._write(f"{done:,} stored events read from MongoDB  {rate:,.0f}/s")
            return
        left = (total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} records "
                f"{rate:,.0f}/s  {int(left) // 60}:{int(left) % 60:02d} left")
        self._write(line)

    def _write(self, line: str) -> None:
        self._stream.write(f"\r{line}" if self._tty else f"{line}\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._tty:
            self._stream.write("\n")


def parse_time(text: str) -> int:
    """RFC 3339 date or date-time (UTC when no offset) -> epoch ms."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 date or time: {text!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def site_id(text: str) -> str:
    if not SITE_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError("a site id is [A-Za-z0-9._-]{1,64}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aggregator.recovery.replay", description=(
            "Recompute the Redis aggregates from the Kafka topic into a new generation and "
            "switch to it atomically, with no downtime; or, with --verify, compare a "
            "recompute with the live aggregates. Settings (KAFKA_BOOTSTRAP, KAFKA_TOPIC, "
            "REDIS_URL, MONGO_URL, MONGO_DB, AGGREGATOR_GROUP, REDIS_MINUTE_TTL_S, "
            "REDIS_HOUR_TTL_S) come from the environment, as for the aggregator (make "
            "replay reads .run/stack.env)."))
    p.add_argument("--site", type=site_id, help="only this site (default: every site)")
    p.add_argument("--since", type=parse_time, metavar="TIME", help=(
        "start at the first record the topic received at or after TIME (RFC 3339) "
        "instead of the beginning: the new generation then counts only those records, "
        "so use it when the earlier ones must not count"))
    p.add_argument("--source", choices=("topic", "mongo"), default="topic", help=(
        "topic (default): every record the topic keeps; mongo: the raw events MongoDB holds "
        "below the aggregator group's committed offsets, then the topic from there on - for "
        "history older than the topic's retention"))
    p.add_argument("--verify", action="store_true", help=(
        "recompute into a scratch generation, print every difference from the live "
        "aggregates (site, aggregate, page), delete the scratch; exit 1 if any differ"))
    return p


async def replay(args: argparse.Namespace, settings: AggregatorSettings) -> tuple[int, Outcome]:
    backends = settings.backends
    redis = connect_redis_client(backends.redis_url, timeout_s=10.0)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backends.mongo_url)
    bar = ProgressBar()
    registry = RegistryCache()  # each site's page quota, applied to the rebuilt generation
    refreshing: asyncio.Task[None] | None = None
    try:
        if not await registry.refresh(mongo[backends.mongo_db]):
            raise SystemExit("cannot read the site registry (each site's page quota) from "
                             "MongoDB; is it up?")
        refreshing = asyncio.create_task(registry.run(mongo[backends.mongo_db]))
        history = None
        if args.source == "mongo":
            history = MongoHistory(
                mongo[backends.mongo_db][EVENTS],
                await committed_offsets(backends.kafka_bootstrap, settings.group_id,
                                        backends.topic))
        run = Rebuild(redis, TopicReader(backends.kafka_bootstrap, backends.topic),
                      retention=settings.retention, site=args.site, verify=args.verify,
                      progress=bar, max_pages=quota_of(registry))
        try:
            outcome = await run.run(args.since, history)
        except RebuildLost:
            bar.finish()
            print("Redis lost the generation being built (flushed or restarted); "
                  "nothing was switched. Run again.", file=sys.stderr)
            return EXIT_LOST, run.outcome
        bar.finish()
    finally:
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        await redis.aclose()
        await mongo.close()
    for d in outcome.differences:
        print(f"DIFF site={d.site_id} aggregate={d.aggregate}"
              f"{f' page={d.field}' if d.field else ''} live={d.live} rebuilt={d.rebuilt}",
              file=sys.stderr)
    for site in outcome.unsettled:
        print(f"UNSETTLED site={site}: live counting did not hold still long enough to "
              "compare; run again in a quieter moment", file=sys.stderr)
    if outcome.differences:
        return EXIT_DIFFERENT, outcome
    return (EXIT_UNSETTLED if outcome.unsettled else 0), outcome


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.source == "mongo" and args.since is not None:
        parser().error("--since reads the topic from a time; it does not go with --source mongo")
    status, outcome = asyncio.run(replay(args, AggregatorSettings.from_env(os.environ)))
    summary = {
        "generation": outcome.generation, "verify": args.verify, "site": args.site,
        "source": args.source, "stored": outcome.stored,
        "records": outcome.records, "counted": outcome.counted,
        "seconds": round(outcome.seconds, 3),
        "records_per_s": round(outcome.records / outcome.seconds) if outcome.seconds else 0,
        # A hot site's units switch one by one (``contracts.keys.unit_of``): sites, not units.
        "sites": len({site_of_unit(u) for u in outcome.switched}) if not args.verify else None,
        "differences": len(outcome.differences), "unsettled": outcome.unsettled,
        "status": status,
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
