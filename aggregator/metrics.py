"""The aggregator's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from contracts.httpkit import HttpMetrics


class AggregatorMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("aggregator")
        r = self.registry
        self.applied = Counter("records_applied_total", "Events counted in Redis", registry=r)
        self.skipped = Counter("duplicates_skipped_total", "Records not counted again, by why",
                               ["reason"], registry=r)
        # Labelled by site: only registered sites reach the aggregator, so the label is bounded.
        self.over_quota = Counter("aggregator_events_over_page_quota_total",
                                  "Events counted under the page (other) because their site "
                                  "reached its page quota (--max-pages)", ["site"], registry=r)
        self.filtered = Counter("aggregator_events_filtered_total",
                                "Requests acknowledged but not counted, by why (bot: the "
                                "User-Agent is a bot, crawler or headless browser)",
                                ["site", "reason"], registry=r)
        self.lists = Gauge("aggregator_breakdown_lists_info", "The bot, browser and referrer "
                           "lists the breakdowns are counted with (value 1)",
                           ["crawlerdetect", "ua_parser_builtins", "referrers_sha256"],
                           registry=r)
        self.ua_cache = Gauge("aggregator_ua_cache_total", "User-Agent classifications since "
                              "start, by whether the cache answered", ["outcome"], registry=r)
        self.registry_read_at = Gauge("aggregator_registry_read_timestamp_seconds",
                                      "When the latest successful read of the site registry "
                                      "(each site's page quota) started", registry=r)
        self.dead_lettered = Counter("dead_lettered_total", "Records sent to the dead-letter topic",
                                     registry=r)
        self.batch_size = Histogram("batch_records", "Records per batch", registry=r,
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
        self.batch_seconds = Histogram("batch_duration_seconds", "Poll-to-commit time per batch",
                                       registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1,
                                                            2.5, 5, 10))
        self.lag = Gauge("consumer_lag", "Records behind the end of the partition",
                         ["partition"], registry=r)
        self.store_up = Gauge("store_up",
                              "1 when the store answered the latest ping and pipeline call",
                              ["store"], registry=r)
        self.redis_intact = Gauge("redis_aggregates_intact",
                                  "1 while Redis holds every aggregate (0: lost, rebuilding)",
                                  registry=r)
        self.rebuilds = Counter("rebuilds_total", "Rebuilds this process ran after Redis lost "
                                "its aggregates", registry=r)
        self._lag_shown: set[int] = set()

    def show_lag(self, lags: dict[int, int]) -> None:
        """Lag of the partitions owned now; a revoked partition's gauge is removed, not
        left at its last value for ever."""
        for partition in self._lag_shown - lags.keys():
            self.lag.remove(str(partition))
        for partition, lag in lags.items():
            self.lag.labels(str(partition)).set(lag)
        self._lag_shown = set(lags)
