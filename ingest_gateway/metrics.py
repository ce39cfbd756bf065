"""The gateway's own Prometheus metrics, beside the shared HTTP ones."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from contracts.httpkit import HttpMetrics


class GatewayMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("ingest_gateway")
        self.accepted = Counter("events_accepted_total", "Events acknowledged by Kafka",
                                registry=self.registry)
        self.rejected = Counter(
            "events_rejected_total", "Events refused, by reason (for a refused body: only when "
            "the number of events it held is known; see bodies_rejected_total)",
            ["reason"], registry=self.registry)
        self.bodies_rejected = Counter(
            "bodies_rejected_total", "Request bodies refused before event validation, by "
            "reason, whether or not their events could be counted", ["reason"],
            registry=self.registry)
        # Bounded: only registered sites reach the rate limit (unknown ones get a 403 first).
        self.site_rate_limited = Counter(
            "site_rate_limited_events_total", "Events refused because their site was over "
            "its events/s in this gateway process (429 site_rate_limited), by site",
            ["site"], registry=self.registry)
        self.produce_latency = Histogram(
            "produce_latency_seconds", "Time from handing a request's events to Kafka to its "
            "ack or to giving up, by outcome (ok, timeout, error)", ["outcome"],
            registry=self.registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5))
        self.tracker_events = Counter(
            "tracker_events_accepted_total", "Events of the tracker formats acknowledged by "
            "Kafka, by format (plausible, umami)", ["via"], registry=self.registry)
        self.salt_fetch = Counter(
            "salt_unavailable_total", "Requests answered 503 because today's salt for "
            "cookieless visitor ids was neither cached nor readable from Redis",
            registry=self.registry)
        self.events_in_flight = Gauge(
            "events_in_flight", "Events handed to the Kafka producer and not yet resolved "
            "(read from the publisher at scrape time)", registry=self.registry)

    def follow_in_flight(self, in_flight: Callable[[], int]) -> None:
        """The gauge reads the publisher's own count: messages stay in flight after a request
        gives up, until aiokafka resolves them, so a per-request inc/dec would be wrong."""
        self.events_in_flight.set_function(in_flight)
