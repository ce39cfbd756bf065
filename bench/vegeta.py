"""The vegeta binary that ``bench.openloop`` drives, built once from the Go module proxy.

Why: a Python open-loop generator could not send more than 3,000-4,000 requests/s on a
2-core machine; vegeta (Go) sends tens of thousands at a fixed rate on one core. The
benches run on the native stack, which needs Go for FerretDB anyway, so vegeta is built
the same way (``go install``, cached under ``$PAGEVIEWS_CACHE``, default
``~/.cache/pageviews``, like ``infra/stack.py``'s builds) and reused from then on.
Called by ``bench.openloop.run`` before each attack; blocks for about a minute the first
time, a ``stat`` after that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.progress import say

MODULE = "github.com/tsenart/vegeta/v12"
VERSION = "v12.13.0"
GO_FALLBACK = Path("/usr/local/go/bin/go")


class VegetaUnavailable(RuntimeError):
    """vegeta is not built and cannot be: no Go toolchain, or no module proxy."""


def cache_dir() -> Path:
    root = Path(os.environ.get("PAGEVIEWS_CACHE", Path.home() / ".cache" / "pageviews"))
    return root / f"vegeta-{VERSION}"


def go_tool() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return str(GO_FALLBACK) if GO_FALLBACK.exists() else None


def ensure_vegeta() -> Path:
    """The path of vegeta ``VERSION``: the cached binary, or one built now (idempotent;
    the binary appears under its final name only once complete)."""
    binary = cache_dir() / "vegeta"
    if binary.exists():
        return binary
    go = go_tool()
    if go is None:
        raise VegetaUnavailable("`go` is needed to build vegeta (Go 1.22 or newer; the "
                                "native stack needs it for FerretDB too)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    proxy = subprocess.run([go, "env", "GOPROXY"], env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    if proxy in ("", "off"):
        raise VegetaUnavailable(f"GOPROXY is {proxy!r}: vegeta cannot be fetched")
    say("vegeta", f"building {MODULE}@{VERSION} with {go} (first time only, ~1 min)")
    started = time.monotonic()
    staging = binary.parent.with_name(f"{binary.parent.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        subprocess.run([go, "install", "-trimpath", f"{MODULE}@{VERSION}"],
                       env={**env, "GOBIN": str(staging)}, check=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        (staging / "vegeta").rename(binary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say("vegeta", f"built in {time.monotonic() - started:.0f}s: {binary}")
    return binary
