# Page-view analytics pipeline. `make up` runs the whole stack natively; `make test` tests it.
SHELL := /bin/bash
PY := .venv/bin/python
UV_ENV := UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3

.PHONY: help venv up down status sites tokens test test-cluster test-unit test-integration lint typecheck replay chaos \
        capacity bench bench-ingest bench-query bench-memory bench-e2e bench-aggregator bench-hot bench-replay bench-fallback bench-report

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet 'uv==0.13.9'
	$(UV_ENV) uv sync --frozen --quiet
	@touch $@

venv: .venv/.synced ## Create the Python environment from uv.lock

up: venv ## Provision (cached) and start the whole stack at http://127.0.0.1:8080
	$(PY) infra/stack.py up

down: ## Stop every process `make up` started, and nothing else
	@python3 infra/stack.py down

status: ## Which parts of the stack run
	@python3 infra/stack.py status

replay: venv ## Rebuild the Redis aggregates from Kafka with no downtime (ARGS="--verify", "--site S", "--help")
	@set -a && . .run/stack.env && set +a && $(PY) -m aggregator.recovery.replay $(ARGS)

sites: venv ## The sites this stack serves (ARGS="add shop [--max-pages N] [--max-events-per-s N] [--burst N] [--origin URL] [--umami-website UUID]", "set shop --max-events-per-s N", "set shop --shards N" (a hot site over N Redis units), "list", "remove shop")
	@set -a && . .run/stack.env && set +a && $(PY) -m admin sites $(ARGS)

tokens: venv ## Stats tokens (ARGS="add --sites shop,blog", "add --admin", "list", "revoke ID")
	@set -a && . .run/stack.env && set +a && $(PY) -m admin tokens $(ARGS)

test: venv ## Unit tests, then integration and e2e tests on a private stack of their own (KEEP=1 keeps it for a rerun)
	$(PY) -m pytest tests/unit -q
	TEST_STACK_KEEP=$(KEEP) $(PY) -m pytest tests/integration tests/e2e -q

test-cluster: venv ## The smoke suite (ingest, stats, replay, Redis-loss rebuild) on 3 Kafka brokers and a 3-master Redis Cluster
	TEST_TOPOLOGY=cluster TEST_STACK_KEEP=$(KEEP) $(PY) -m pytest -m smoke tests/integration tests/e2e -q

test-unit: venv ## Unit tests only (no servers)
	$(PY) -m pytest tests/unit -q

lint: venv ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m mypy contracts ingest_gateway aggregator query_api admin tests bench

chaos: venv ## Faults under load on a private stack (.chaos-stack/), then the exact check; exit 1 on any loss or double count (CHAOS_SECONDS=N per phase, ARGS="--faults gateway_kill,redis_flush" or "--list", CHAOS_BROKERS=1 for a single broker (default 3, every fault), CHAOS_KEEP=1); JSON in bench/results
	$(PY) -m bench.chaos $(ARGS)

# Benchmarks (not part of `make test`): BENCH_SECONDS=N shortens every measurement.
BENCH := $(PY) -m bench
bench: venv ## Every benchmark against the running stack, issue 14's goals as ratios, exactly-once checked (exit 1 if not); JSON in bench/results
	$(BENCH) all
bench-ingest: venv ## POST /track and /events through NGINX at several concurrencies, their peaks; exactly-once checked
	$(BENCH) ingest
bench-query: venv ## The stats endpoints through NGINX, idle and during ingestion
	$(BENCH) query
bench-memory: venv ## Redis growth per event on issue 18's soak (300 sites x 20,000 pages, 1,000 events/s for 30 x BENCH_SECONDS)
	$(BENCH) memory
bench-e2e: venv ## The highest sustained rate end to end (searched), freshness at half of it; exactly-once checked
	$(BENCH) e2e
bench-aggregator: venv ## Drain rate with one and two aggregators vs the insert ceiling; exactly-once checked
	$(BENCH) aggregator
bench-hot: venv ## One site split over BENCH_HOT_SHARDS (4) against the same unsplit, on Redis Cluster (REDIS_CLUSTER=3 make up): drain and each master's CPU; exactly-once checked
	$(BENCH) hot
bench-replay: venv ## Rate of python -m aggregator.recovery.replay rebuilding from the topic
	$(BENCH) replay
bench-fallback: venv ## /stats answered from MongoDB (1,000,000 events over 1,000 sites, seeded once)
	$(PY) -m bench fallback
capacity: venv ## What a load needs, from the benchmarks' measurements (ARGS="--events-per-s 100000 --sites 5000 --pages 200000", or "--machine": the model against make bench here)
	$(PY) -m bench.capacity $(ARGS)

bench-report: venv ## PNG charts of the latest results (bench/results/*.png)
	$(BENCH) report
