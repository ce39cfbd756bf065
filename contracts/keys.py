"""The Redis key layout: one function per key, and no key string is built anywhere else.

Every key of one site carries the site as a Redis Cluster hash tag (``{site}``), so a site's
whole update, together with the applied-offset marker it covers, is a single-slot atomic
step, and the same code runs on one Redis or on a cluster. Keys also carry a generation,
so a rebuild can fill a new generation while the current one keeps serving.

Bucket numbers are epoch minutes, hours and days (see ``contracts.timebuckets``).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "pv"
# Default retention of minute and hour buckets; the configured one is
# ``contracts.settings.Retention`` (REDIS_MINUTE_TTL_S, REDIS_HOUR_TTL_S).
MINUTE_TTL_S = 48 * 3600
HOUR_TTL_S = 90 * 24 * 3600
REALTIME_WINDOW_MINUTES = 5  # "visitors right now": the last five minute buckets
DEFAULT_GENERATION = "0"


# Keys about Redis as a whole share a hash tag no site id can take (site ids are
# [A-Za-z0-9._-]), so a script may touch them together on a cluster.
_META = f"{PREFIX}:{{!meta}}"


def sites_key() -> str:
    """A set of every site id seen; not part of any site's atomic step (SADD is idempotent)."""
    return f"{PREFIX}:sites"


def intact_key() -> str:
    """Present while Redis holds every aggregate: set when a rebuild completes. Redis
    restarted empty or flushed loses it, which is how its loss is detected."""
    return f"{_META}:intact"


def build_marker_key(generation: str) -> str:
    """Exists while a rebuild fills ``generation``: gone means Redis lost it midway."""
    return f"{_META}:building:{generation}"


def rebuild_lock_key() -> str:
    """Held (with an expiry the holder keeps renewing) by the one process rebuilding."""
    return f"{_META}:rebuild"


@dataclass(frozen=True, slots=True)
class SiteKeys:
    site_id: str
    generation: str = DEFAULT_GENERATION

    @property
    def _base(self) -> str:
        return f"{PREFIX}:{{{self.site_id}}}:g{self.generation}"

    def generation_match(self) -> str:
        """SCAN pattern for every key of this generation (site ids hold no glob characters)."""
        return f"{self._base}:*"

    def named(self, suffix: str) -> str:
        """The key of an aggregate in this generation, by its name (see ``suffix_of``)."""
        return f"{self._base}:{suffix}"

    def suffix_of(self, key: str) -> str:
        """A key of this generation without its generation prefix: the same aggregate's
        name in any generation (``views:h:490000``)."""
        return key.removeprefix(f"{self._base}:")

    def generation_pointer(self) -> str:
        """Which generation of this site's aggregates is current (a string)."""
        return f"{PREFIX}:{{{self.site_id}}}:current"

    def applied_offsets(self) -> str:
        """Hash partition -> last Kafka offset applied to this site's aggregates."""
        return f"{self._base}:offsets"

    def total_views(self) -> str:
        return f"{self._base}:views"

    def page_views(self) -> str:
        """Sorted set page -> views: per-page totals and the top-pages ranking in one key."""
        return f"{self._base}:pages"

    def visitors(self) -> str:
        """HyperLogLog of every visitor of the site."""
        return f"{self._base}:uv"

    def page_visitors(self, page_id: str) -> str:
        return f"{self._base}:uv:p:{page_id}"

    def bucket_views(self, unit: str, bucket: int) -> str:
        """Total views in one minute (``m``), hour (``h``) or day (``d``) bucket."""
        return f"{self._base}:views:{unit}:{bucket}"

    def bucket_page_views(self, unit: str, bucket: int) -> str:
        """Hash page -> views in one bucket."""
        return f"{self._base}:pages:{unit}:{bucket}"

    def bucket_visitors(self, unit: str, bucket: int) -> str:
        """HyperLogLog of the visitors in one minute, hour or day bucket."""
        return f"{self._base}:uv:{unit}:{bucket}"

    def bucket_page_visitors(self, unit: str, bucket: int, page_id: str) -> str:
        """HyperLogLog of one page's visitors in one minute, hour or day bucket."""
        return f"{self._base}:uv:{unit}:{bucket}:p:{page_id}"

