"""Plumbing shared by the benchmarks that use it (today: bench_scaleout_ray.py): percentiles of
timed calls, the machine and its load, and the JSON result written to a file and printed."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary_ms(values_ms: list[float]) -> dict[str, float | int]:
    """n, p50, p95 and max of timings in milliseconds."""
    return {"n": len(values_ms), "p50": round(pct(values_ms, 50), 2), "p95": round(pct(values_ms, 95), 2),
            "max": round(max(values_ms), 2) if values_ms else float("nan")}


def timed_ms(call: Callable[[], Any]) -> float:
    """Milliseconds one call took."""
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def ratio(num: float, den: float) -> float:
    return round(num / den, 2) if den else float("nan")


def log(message: str) -> None:
    """Progress to stderr (stdout carries the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def write_result(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
