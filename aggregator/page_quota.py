"""Each site's page quota, as the aggregator and the replay read it from the site registry.

The quota is enforced in the Redis apply script (``aggregator.counting.redis_sink``); this
module only answers "how many pages may this site name", from the registry snapshot that
``contracts.registry.RegistryCache`` keeps fresh (re-read every 2 s), so ``make sites ARGS=
"add shop --max-pages N"`` takes effect within seconds, without a restart. A site the
registry does not name (the gateways refuse those, so only old records or a registry read
that lags a new site) gets ``DEFAULT_MAX_PAGES``.

Who calls it: the pipeline once per site and batch, the rebuild once per site and read
batch; never blocks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Gauge
from pymongo.asynchronous.database import AsyncDatabase

from aggregator.counting.pipeline import MaxPages
from contracts.keys import site_of_unit
from contracts.registry import REFRESH_S, RegistryCache, RegistrySource
from contracts.tenancy import DEFAULT_MAX_PAGES


def quota_of(registry: RegistrySource) -> MaxPages:
    """site id -> its ``max_pages`` in the registry's latest snapshot. A hot site's unit
    (``contracts.keys.unit_of``) gets its share: each unit holds the pages of its hash, so
    the site names about ``max_pages`` pages in all."""

    def max_pages(unit: str) -> int:
        site = registry.current().sites.get(site_of_unit(unit))
        return DEFAULT_MAX_PAGES if site is None else -(-site.max_pages // site.shards)

    return max_pages


async def keep_fresh(registry: RegistryCache, database: AsyncDatabase[Any], read_at: Gauge,
                     refresh_s: float = REFRESH_S) -> None:
    """``RegistryCache.run`` that also shows when the latest successful read *started*
    (``aggregator_registry_read_timestamp_seconds``): a quota changed before that moment
    is in force. Operators (and the flood test) read it to know a change has arrived."""
    while True:
        started = time.time()
        if await registry.refresh(database):
            read_at.set(started)
        await asyncio.sleep(refresh_s)
