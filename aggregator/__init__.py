"""The aggregator: Kafka page views -> raw events in MongoDB and real-time aggregates in Redis."""
