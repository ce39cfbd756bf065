"""The gateway's own Prometheus metrics, beside the shared HTTP ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from contracts.httpkit import HttpMetrics


class GatewayMetrics(HttpMetrics):
    def __init__(self) -> None:
        super().__init__("ingest_gateway")
        self.accepted = Counter("events_accepted_total", "Events acknowledged by Kafka",
                                registry=self.registry)
        self.rejected = Counter("events_rejected_total", "Events refused, by reason",
                                ["reason"], registry=self.registry)
        self.produce_latency = Histogram(
            "produce_latency_seconds", "Time from handing a request's events to Kafka to its ack",
            registry=self.registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5))
        self.events_in_flight = Gauge("events_in_flight", "Events sent, not yet acknowledged",
                                      registry=self.registry)
