"""CI's proof that `make test` leaves the user's stack exactly as it was.

    python .ci/user_stack.py seed  SNAPSHOT   post a known set of events to the stack `make up`
                                              started, wait until all are counted, save what it
                                              answers (stats, sites, stored data, pids)
    python .ci/user_stack.py check SNAPSHOT   the same reading again: any difference fails

Reads only `.run/stack.env` (the user's stack) and talks to it through its public addresses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.mongo import DATABASE, EVENTS  # noqa: E402
from tests.kafka_tools import end_offsets  # noqa: E402

SITE = "ci-user-site"
EVENTS_SENT = 600
PAGES = 7
USERS = 45
HOUR_MS = 3_600_000


def stack_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".run" / "stack.env").read_text().split("\n")
             if "=" in line)
    return {key: value for key, value in pairs}


def auth(env: dict[str, str]) -> dict[str, str]:
    """The admin token `make up` recorded in stack.env (stats need one)."""
    return {"Authorization": f"Bearer {env['STATS_TOKEN']}"}


def register_site() -> None:
    """`make sites ARGS="add ci-user-site"`: the gateways serve only registered sites."""
    subprocess.run(["make", "-s", "sites", f"ARGS=add {SITE}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def known_events(base_ms: int) -> list[dict[str, Any]]:
    """Fixed ids, pages, visitors and times spread over the hour before ``base_ms``."""
    return [{"event_id": f"ci-{i:05d}", "site_id": SITE, "page_id": f"/page-{i % PAGES}",
             "user_id": f"visitor-{(i * 7) % USERS}", "ts": base_ms - HOUR_MS + i * 5_000}
            for i in range(EVENTS_SENT)]


async def answers(http: aiohttp.ClientSession, base: str, window: dict[str, str]
                  ) -> dict[str, Any]:
    """Every read the stack offers for the site, over all time and over a fixed window."""
    paths = {
        "stats": ("/stats", {"site_id": SITE}),
        "stats_window": ("/stats", {"site_id": SITE, **window}),
        "top": ("/stats/top", {"site_id": SITE, "limit": "10"}),
        "top_visitors": ("/stats/top", {"site_id": SITE, "by": "unique_visitors"}),
        "timeseries": ("/stats/timeseries", {"site_id": SITE, "interval": "minute", **window}),
        "page": ("/stats/pages/%2Fpage-3", {"site_id": SITE}),
        "sites": ("/stats/sites", {}),
    }
    out: dict[str, Any] = {}
    for name, (path, params) in paths.items():
        async with http.get(f"{base}{path}", params=params) as response:
            out[name] = {"status": response.status,
                         "source": response.headers.get("X-Stats-Source", "redis"),
                         "body": await response.json()}
    return out


async def stored(env: dict[str, str]) -> dict[str, Any]:
    """What the servers hold: the topic's end offsets, MongoDB's documents, Redis's keys."""
    offsets = await end_offsets(env["KAFKA_BOOTSTRAP"], env["KAFKA_TOPIC"])
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["MONGO_URL"])
    redis = Redis.from_url(env["REDIS_URL"])
    try:
        events = mongo[DATABASE][EVENTS]
        return {"topic_end_offsets": {str(tp.partition): end for tp, end in offsets.items()},
                "mongo_documents": await events.count_documents({}),
                "mongo_site_documents": await events.count_documents({"site_id": SITE}),
                "redis_keys": sorted([k.decode() async for k in redis.scan_iter(count=1000)])}
    finally:
        await mongo.close()
        await redis.aclose()


def pids() -> dict[str, int]:
    status = subprocess.run([sys.executable, str(ROOT / "infra" / "stack.py"), "status"],
                            check=True, capture_output=True, text=True).stdout
    return dict(json.loads(status))


async def reading(env: dict[str, str], window: dict[str, str]) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers=auth(env)) as http:
        return {"answers": await answers(http, env["HTTP_URL"], window),
                "stored": await stored(env), "pids": pids()}


async def seed() -> dict[str, Any]:
    env = stack_env()
    now_ms = int(time.time() * 1000)
    events = known_events(now_ms)
    register_site()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers=auth(env)) as http:
        for start in range(0, len(events), 100):
            deadline = time.monotonic() + 30  # every gateway re-reads the sites within 2 s
            while True:
                async with http.post(f"{env['HTTP_URL']}/events",
                                     json=events[start:start + 100]) as response:
                    if response.status != 403 or time.monotonic() > deadline:
                        assert response.status == 202, await response.text()
                        break
                await asyncio.sleep(0.2)
        deadline = time.monotonic() + 120
        while True:
            async with http.get(f"{env['HTTP_URL']}/stats", params={"site_id": SITE}) as r:
                counted = (await r.json())["total_views"]
            if counted == EVENTS_SENT:
                break
            assert time.monotonic() < deadline, f"{counted} of {EVENTS_SENT} counted in 120 s"
            await asyncio.sleep(0.2)
    first = events[0]["ts"] // 60_000 * 60_000
    window = {"from": iso(first + 7 * 60_000), "to": iso(first + 41 * 60_000)}  # odd minutes
    return {"window": window, **await reading(env, window)}


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            found += differences(before.get(key), after.get(key), f"{path}.{key}")
        return found
    if (isinstance(before, list) and isinstance(after, list) and before != after
            and all(isinstance(item, str) for item in before + after)):
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        return [f"{path}: added {added[:5]!r} ({len(added)}), removed {removed[:5]!r} "
                f"({len(removed)})"]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"[:400]]


async def check(before: dict[str, Any]) -> int:
    after = {"window": before["window"], **await reading(stack_env(), before["window"])}
    found = differences(before, after)
    for line in found:
        print(f"user stack changed: {line}", file=sys.stderr)
    if not found:
        print(f"user stack unchanged: {len(before['answers'])} answers, "
              f"{len(before['stored']['redis_keys'])} Redis keys, "
              f"{before['stored']['mongo_documents']} MongoDB documents, topic end offsets "
              f"and {len(before['pids'])} pids all as before")
    return 1 if found else 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("seed", "check"):
        sys.exit(__doc__)
    snapshot = Path(argv[2])
    if argv[1] == "seed":
        snapshot.write_text(json.dumps(asyncio.run(seed()), indent=1))
        print(f"user stack seeded: {EVENTS_SENT} events of {SITE}, reading saved in {snapshot}")
        return 0
    return asyncio.run(check(json.loads(snapshot.read_text())))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
