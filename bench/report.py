"""``make bench-report``: the latest results drawn as PNG charts for the README.

Three charts from the newest results JSON: throughput against p99 latency for every
load-generator figure (ingest and query), the freshness distribution of each e2e step, and
every throughput as a fraction of its limit. Matplotlib with the non-interactive Agg
backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.results import latest_by_suite
from bench.table import markdown, rows


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput_latency(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for suite, marker in (("ingest", "o"), ("query", "s")):
        figures = [f for f in data["figures"] if f["suite"] == suite and f.get("latency")]
        for f in figures:
            ax.scatter(f["value"], f["latency"]["p99_ms"], marker=marker, s=40)
            ax.annotate(f["name"], (f["value"], f["latency"]["p99_ms"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (events/s for ingest, requests/s for query)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("Throughput against p99 latency, through NGINX")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out / "throughput-latency.png")


def _freshness(data: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for f in data["figures"]:
        samples = f.get("extra", {}).get("freshness_ms")
        if f["suite"] == "e2e" and samples:
            ranks = [100 * (i + 1) / len(samples) for i in range(len(samples))]
            ax.plot(samples, ranks, label=f["name"])
    target = data.get("limits", {}).get("freshness-target")
    if target:
        ax.axvline(target["value"], color="red", linestyle="--", label="1 s target")
    ax.set_xlabel("freshness: gateway 202 to visible in /stats (ms)")
    ax.set_ylabel("percent of probe events")
    ax.set_title("Freshness distribution (cumulative)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "freshness.png")


def _ratios(data: dict[str, Any], out: Path) -> Path:
    rows = [(f"{f['suite']}: {f['name']}", f["ratio"]) for f in data["figures"]
            if f.get("ratio") is not None and f["suite"] != "e2e"]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh([r[0] for r in rows], [100 * r[1] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("percent of the limit measured in the same run")
    ax.set_title("Each result against its limit")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out / "ratios.png")


SUITES = ("query", "e2e", "ingest", "aggregator", "replay")


def draw(results_dir: Path) -> list[Path]:
    """Charts of the newest results of each suite, PNGs in ``results_dir``, and the same
    figures as a Markdown table (``latest.md``) for the README."""
    data = latest_by_suite(results_dir, SUITES)
    md = results_dir / "latest.md"
    sources = ", ".join(f"{suite}: {src['file']}" for suite, src in data["sources"].items())
    md.write_text(f"{markdown(rows(data))}\n\nFrom {sources}.\n")
    return [md, _throughput_latency(data, results_dir), _freshness(data, results_dir),
            _ratios(data, results_dir)]
