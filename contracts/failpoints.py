"""Failpoints: the named places where a service can be made to fail on purpose, all listed
here and nowhere else.

Why they exist: some guarantees are about a crash at an exact step (the aggregator dying
after writing MongoDB but before Redis, say). Killing a process from outside hits such a step
only by luck; a failpoint hits it every time, so a test can prove a crash there loses and
doubles nothing (``tests/integration/test_aggregator_exactness.py``).

Every failpoint is off unless its environment variable names it; unset, the code path is one
comparison that never matches. A name that is not listed here fails at start-up
(``contracts.settings``), so a misspelt failpoint can never make a test pass by not firing.
Pure data, no I/O: the aggregator's ``pipeline.CrashHook`` fires them.
"""

from __future__ import annotations

from dataclasses import dataclass

CRASH_AT_VARIABLE = "AGGREGATOR_CRASH_AT"  # which failpoint (unset: none)
CRASH_AT_BATCH_VARIABLE = "AGGREGATOR_CRASH_AT_BATCH"  # from which batch on (default: first)
CRASH_EXIT_STATUS = 70  # the process exits at once with this status (os._exit: no cleanup)


@dataclass(frozen=True, slots=True)
class Failpoint:
    name: str
    service: str
    what: str


AFTER_MONGO = Failpoint(
    "after_mongo", "aggregator",
    "exit after the batch's raw events are in MongoDB, before Redis is updated and before "
    "the Kafka offsets are committed")
AFTER_REDIS = Failpoint(
    "after_redis", "aggregator",
    "exit after the batch is applied to Redis (with its applied offsets), before the Kafka "
    "offsets are committed")
MONGO_AHEAD = Failpoint(
    "mongo_ahead", "aggregator",
    "exit when the batch is applied to Redis and the next batch's raw events are in MongoDB "
    "(the stages overlap), before either batch's Kafka offsets are committed")

FAILPOINTS: dict[str, Failpoint] = {f.name: f for f in (AFTER_MONGO, AFTER_REDIS, MONGO_AHEAD)}
