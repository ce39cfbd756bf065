"""One JSON line per event; a third party repeating itself during an outage is held back."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from contracts.logs import JsonFormatter, RepeatFilter


def logger_writing_to(stream: io.StringIO, name: str, clock: list[float],
                      monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    """The named logger, writing only to ``stream`` until the test ends."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("aggregator", "aggregator-1"))
    handler.addFilter(RepeatFilter(window_s=60, clock=lambda: clock[0]))
    logger = logging.getLogger(name)
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    return logger


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_aiokafka_repeating_a_warning_logs_once_a_minute_with_a_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream, clock = io.StringIO(), [0.0]
    log = logger_writing_to(stream, "aiokafka.consumer.group_coordinator", clock, monkeypatch)
    for second in range(120):
        clock[0] = float(second)
        log.warning("Heartbeat failed for group %s", "aggregators")
    log.warning("Coordinator dead")

    out = lines(stream)
    assert [(line["event"], line.get("repeated"), line.get("repeated_over_s"))
            for line in out] == [
        ("Heartbeat failed for group aggregators", None, None),
        ("Heartbeat failed for group aggregators", 59, 60),
        ("Coordinator dead", None, None),
    ]
    assert out[0]["service"] == "aggregator" and out[0]["level"] == "warning"


def test_our_own_lines_are_never_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, clock = io.StringIO(), [0.0]
    log = logger_writing_to(stream, "aggregator.counting.pipeline", clock, monkeypatch)
    for _ in range(3):
        log.warning("store_unavailable", extra={"fields": {"store": "redis"}})
    assert [line["store"] for line in lines(stream)] == ["redis"] * 3
