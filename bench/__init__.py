"""Benchmarks of the pipeline against the limits of the machine they run on.

Each suite (ingest, query, e2e, aggregator, replay) measures one stage through its real
servers on loopback and reports every figure as a ratio to a limit measured in the same run
(NGINX answering a static 204, a trivial aiohttp handler, Kafka's own producer tool,
redis-benchmark, a bare MongoDB insert). ``python -m bench SUITE...`` runs them; the Makefile's
``bench-*`` targets are thin wrappers. Not part of the test suite: numbers come from here,
never from timed assertions.
"""
