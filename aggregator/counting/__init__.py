"""Live counting: each batch of Kafka records into MongoDB (once) and the Redis aggregates
(exactly once), then the commit (``pipeline`` says how)."""
