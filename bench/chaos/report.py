"""What a chaos run prints and saves: one table row per phase, and the JSON record.

Pure formatting of the run's JSON document (``as_json``), so the printed table and the
README's table are the same function of the same data (``bench.table`` renders it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import table
from bench.chaos.runner import ChaosRun, verdicts

HEADERS = ("phase", "sent", "acked", "counted", "lost", "double", "ambiguous", "retries",
           "answers other than 202", "errors", "recover s", "lag steady/peak", "lag back s")
ANSWER_NAMES = {"connection_error": "conn", "timeout": "timeout",
                "stale_connection": "resent on a new connection"}


def as_json(run: ChaosRun, machine: Mapping[str, Any], versions: Mapping[str, str]
            ) -> dict[str, Any]:
    exact = run.exact.as_json() if run.exact else None
    failed = verdicts(run)
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started_at)),
        "duration_s": round(time.time() - run.started_at, 1),
        "machine": dict(machine), "versions": dict(versions),
        "settings": run.settings.as_json(), "sites": run.sites,
        "phases": [p.as_json() for p in run.ledger.summary()],
        "faults": [f.as_json() for f in run.faults],
        "exact": exact, "ok": not failed, "failures": failed,
    }


def _answers(answers: Mapping[str, int]) -> str:
    parts = [f"{ANSWER_NAMES.get(k, k)}: {n}" for k, n in sorted(answers.items()) if k != "202"]
    return ", ".join(parts) or "-"


def rows(data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    faults = {f["fault"]: f for f in data.get("faults", [])}
    exact_phases = (data.get("exact") or {}).get("phases", {})
    out: list[tuple[str, ...]] = []
    for p in data.get("phases", []):
        name = p["phase"]
        ex = exact_phases.get(name, {})
        fault = faults.get(name)
        base = faults.get(name.removesuffix(".baseline")) if name.endswith(".baseline") else None
        lag = (fault or {}).get("lag") or {}
        base_lag = (base or {}).get("lag") or {}
        if fault:
            recover = table.number(fault["recovered_s"], 1) if fault["recovered_s"] is not None \
                else "never"
            lag_text = f"{table.number(lag.get('steady'))}/{table.number(lag.get('peak'))}"
            back = table.number(lag.get("settled_s"), 1)
        else:
            recover, back = "", ""
            lag_text = f"{table.number(base_lag.get('steady'))}/-" if base else ""
        errors = sum(p["errors"].values())
        out.append((name, table.number(p["sent"]), table.number(p["acked"]),
                    table.number(ex.get("counted")), table.number(ex.get("lost")),
                    table.number(ex.get("double_counted")), table.number(p["ambiguous"]),
                    table.number(p["client_retries"]), _answers(p["answers"]), str(errors),
                    recover, lag_text, back))
    return out


def render(data: Mapping[str, Any]) -> str:
    return table.render(rows(data), HEADERS)


def markdown(data: Mapping[str, Any]) -> str:
    return table.markdown(rows(data), HEADERS)


def save(data: Mapping[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = data["started_at"].replace("-", "").replace(":", "")
    path = directory / f"chaos-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
