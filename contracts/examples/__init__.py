"""Example events every service's tests use: valid ones, and invalid ones with the field
and the reason fragment the gateway must report. Loaded with ``load_examples``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent


def load_examples(name: str) -> list[dict[str, Any]]:
    """``valid`` or ``invalid``: a list of {"name", "event", ...} cases."""
    cases: list[dict[str, Any]] = orjson.loads((HERE / f"{name}.json").read_bytes())
    return cases
