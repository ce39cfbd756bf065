"""The ingest gateway: validates page views over HTTP and publishes them to Kafka."""
