"""Plumbing shared by the benchmarks in this folder: timing and percentiles, the machine and its
load, the start of a result (``base_result``), the JSON result written to a file (``write_json``,
``write_result``), progress lines, a free loopback port, the ``--db`` argument with the private
PostgreSQL cluster it defaults to, and the start of a loopback Ray cluster.

A benchmark imports it after putting this folder on ``sys.path`` (as its first lines do), so it
works when run as ``.venv/bin/python benchmarks/bench_X.py`` from the repository root."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (nan when there are none)."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def med(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def summary_ms(values_ms: list[float]) -> dict[str, float | int]:
    """n, p50, p95 and max of timings in milliseconds."""
    return {"n": len(values_ms), "p50": round(pct(values_ms, 50), 2), "p95": round(pct(values_ms, 95), 2),
            "max": round(max(values_ms), 2) if values_ms else float("nan")}


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, value) of one call ``fn(*args, **kwargs)``."""
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t, value


def timed_ms(call: Callable[[], Any]) -> float:
    """Milliseconds one call took."""
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000.0


def loadavg(digits: int | None = 2) -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to ``digits`` (None: as the OS gives them)."""
    load = os.getloadavg()
    return list(load) if digits is None else [round(x, digits) for x in load]


def machine() -> dict[str, Any]:
    """CPU count, Python version and platform of this machine."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601 with ``Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def base_result(*, started: bool = True) -> dict[str, Any]:
    """The first keys of a result: ``machine``, ``started`` (unless ``started=False``) and
    ``loadavg_at_start`` (unrounded)."""
    out: dict[str, Any] = {"machine": machine()}
    if started:
        out["started"] = utc_now()
    out["loadavg_at_start"] = loadavg(None)
    return out


def ratio(num: float, den: float) -> float:
    """``num / den`` to two decimals (nan when ``den`` is 0)."""
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


def write_json(result: dict[str, Any], out: Path | None, *, indent: int = 2, default: Callable[[Any], Any] | None = None,
               announce: str = "wrote {}") -> None:
    """Write the result as JSON to ``out`` (its folder made; nothing when ``out`` is None) and
    print ``announce`` with the path (nothing when empty)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent, default=default))
    if announce:
        print(announce.format(out))


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_db_argument(ap: argparse.ArgumentParser) -> None:
    """``--db URL``: a PostgreSQL cluster to use instead of a private one (``start_postgres``)."""
    ap.add_argument("--db", help="a PostgreSQL URL whose cluster may host a new database (default: a private "
                                 "cluster started with scripts/postgres.sh)")


def start_postgres(db: str | None, folder: Path) -> str:
    """``db``, or the URL of a private cluster started in ``folder`` by scripts/postgres.sh."""
    return db or subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start", str(folder)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip()


def stop_postgres(db: str | None, folder: Path) -> None:
    """Stop the private cluster of ``start_postgres`` (nothing when ``db`` was given)."""
    if not db:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", str(folder)], timeout=60, check=False)


def start_ray(cluster: Any) -> None:
    """Start a loopback Ray cluster (tests/scaleout/_ray_cluster.py) of a head and one worker node
    and say how long it took."""
    t = time.perf_counter()
    cluster.start(workers=1)
    log(f"Ray cluster (head + 1 worker node, 1 CPU each) up in {time.perf_counter() - t:.1f}s")


@contextmanager
def ray_cluster(temp: Path) -> Iterator[Any]:
    """A started loopback Ray cluster (``start_ray``) in ``temp/ray``, one CPU a node, whose
    address this process's Ray drivers use; at the end it is stopped and ``temp`` removed."""
    from tests.scaleout._ray_cluster import RayCluster

    cluster = RayCluster(temp / "ray", cpus=1)
    cluster.temp.mkdir()
    os.environ.update(cluster.env())
    try:
        start_ray(cluster)
        yield cluster
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(temp)], check=False, timeout=120)
