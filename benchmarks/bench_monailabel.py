"""Benchmark: ``/infer/{model}`` through the MONAI-Label-compatible surface versus the native
``/api/v1`` in the same run, on the same server process and the same warm model.

Measured per volume (96x96x64 and 256x256x128, made of real Task04_Hippocampus crops tiled):

- **automatic**: compat ``POST /infer/{model}?image=`` (default multipart answer, gzip NIfTI
  part) vs native ``POST /api/v1/models/{model}/infer`` (gzip NIfTI);
- **one click**: the compat request carries *all* clicks so far, as MONAI Label's clients send
  them (the server's implicit session runs the network only for the new one) vs native
  ``POST /api/v1/sessions/{id}/clicks`` with the one new click. The first click of each
  (compat: implicit session creation; native: ``POST /sessions``) is reported apart.

Requests alternate compat / native (order swapped each round), so background noise hits both
alike. The automatic path also reports the network's own time of each call (``X-Segloop-Seconds``,
answered by both surfaces) and what each route adds around it: on a shared CPU the same
whole-volume inference varied from 13 s to 150 s within one server process, far more than the
routes differ, so ``auto_compat_over_native`` alone says little; ``auto_route_overhead_ms`` and
``auto_compat_over_native_same_model`` (both routes at the median network time) say what the
compatible surface costs. A cProfile of both automatic requests in one server process
(2026-12-05) found the same work — ``Predictor.predict`` on the same loaded volume, the same
gzip NIfTI encoder — with the network at 90-99 % of each request. The model is a small network trained for a few epochs on hippocampus cases: latency,
not accuracy, is measured.

Usage::

    .venv/bin/python benchmarks/bench_monailabel.py --out benchmarks/results/monailabel.json
    .venv/bin/python benchmarks/bench_monailabel.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import HIPPO, ROOT, ServerProc, build_data  # noqa: E402
from benchlib import write_json  # noqa: E402

SHAPES = {"96x96x64": (96, 96, 64), "256x256x128": (256, 256, 128)}
MODEL = "bench"
TRAIN = {"epochs": 2, "batch_size": 2, "patch_size": [32, 32, 32], "val_split": 0.34,
         "network": {"channels": [8, 16, 32], "num_res_units": 1}}


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t0
    if r.status_code not in (200, 201):
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    _ = r.content
    return dt


def compat_infer(c: httpx.Client, image: str, params: dict[str, Any]) -> httpx.Response:
    return c.post(f"/infer/{MODEL}", params={"image": image}, files={"params": (None, json.dumps(params))})


def clicks_for(shape: tuple[int, int, int], n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(rng.integers(s // 4, 3 * s // 4)) for s in shape] for _ in range(n)]


def timed_model(fn: Any) -> tuple[float, float]:
    """(wall seconds of the request, the network's own seconds as the server reports them in
    ``X-Segloop-Seconds``)."""
    t0 = time.perf_counter()
    r = fn()
    _ = r.content
    dt = time.perf_counter() - t0
    if r.status_code not in (200, 201):
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    return dt, float(r.headers.get("X-Segloop-Seconds", "nan"))


def bench_volume(c: httpx.Client, image: str, shape: tuple[int, int, int], rounds: int,
                 auto: bool = True) -> dict[str, Any]:
    out: dict[str, list[float]] = {"auto_compat": [], "auto_native": [], "click_compat": [], "click_native": []}
    model_s: dict[str, list[float]] = {"auto_compat": [], "auto_native": []}
    if auto:  # warm both paths (model load, first-call allocations)
        timed(lambda: compat_infer(c, image, {}))
        timed(lambda: c.post(f"/api/v1/models/{MODEL}/infer", json={"image_id": image}))
    for r in range(rounds if auto else 0):
        pair: list[tuple[str, Any]] = [("auto_compat", lambda: compat_infer(c, image, {})),
                ("auto_native", lambda: c.post(f"/api/v1/models/{MODEL}/infer", json={"image_id": image}))]
        for key, fn in pair if r % 2 == 0 else pair[::-1]:
            wall, net = timed_model(fn)
            out[key].append(wall)
            model_s[key].append(net)

    points = clicks_for(shape, rounds + 1, seed=len(image))
    first: dict[str, float] = {}
    t0 = time.perf_counter()
    sid = c.post("/api/v1/sessions", json={"image_id": image, "model": MODEL}).json()["id"]
    first["session_open_native"] = time.perf_counter() - t0
    first["first_click_native"] = timed(lambda: c.post(
        f"/api/v1/sessions/{sid}/clicks", json={"clicks": [{"class": "Anterior", "points": [points[0]]}]}))
    first["first_click_compat"] = timed(lambda: compat_infer(
        c, image, {"label": "Anterior", "foreground": [points[0]], "background": []}))
    for r in range(1, rounds + 1):
        p = points[r]
        clicks: list[tuple[str, Any]] = [
            ("click_compat", lambda p=p, r=r: compat_infer(
                c, image, {"label": "Anterior", "foreground": points[: r + 1], "background": []})),
            ("click_native", lambda p=p: c.post(
                f"/api/v1/sessions/{sid}/clicks", json={"clicks": [{"class": "Anterior", "points": [p]}]})),
        ]
        for key, fn in clicks if r % 2 == 0 else clicks[::-1]:
            out[key].append(timed(fn))
    c.delete(f"/api/v1/sessions/{sid}")
    summary: dict[str, Any] = {k: {"p50_ms": round(1000 * statistics.median(v), 1),
                                   "min_ms": round(1000 * min(v), 1), "n": len(v)} for k, v in out.items() if v}
    summary["first"] = {k: round(1000 * v, 1) for k, v in first.items()}
    for kind in ("auto", "click"):
        if out[f"{kind}_compat"] and out[f"{kind}_native"]:
            a, b = statistics.median(out[f"{kind}_compat"]), statistics.median(out[f"{kind}_native"])
            summary[f"{kind}_compat_over_native"] = round(a / b, 3)
    if out["auto_compat"] and out["auto_native"]:
        # The network's time on a shared CPU varies far more between calls than the routes differ
        # (one process, same call: 13 s to 150 s under load 9). What each route adds around it:
        over = {k: [w - m for w, m in zip(out[k], model_s[k], strict=True)] for k in model_s}
        net = statistics.median(model_s["auto_compat"] + model_s["auto_native"])
        oc, on = statistics.median(over["auto_compat"]), statistics.median(over["auto_native"])
        summary["auto_model_s"] = {k: [round(v, 3) for v in vs] for k, vs in model_s.items()}
        summary["auto_route_overhead_ms"] = {"compat": round(1000 * oc, 1), "native": round(1000 * on, 1)}
        # the ratio with the same network time for both (the median of all automatic calls)
        summary["auto_compat_over_native_same_model"] = round((net + oc) / (net + on), 3)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "monailabel.json")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"volumes to measure (default {','.join(SHAPES)})")
    ap.add_argument("--clicks-only", action="store_true", help="skip the automatic inferences (slow on CPU)")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    if not HIPPO.is_dir():
        print(f"{HIPPO} is missing", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-monailabel-"))
    srv = None
    try:
        data = build_data(work, cases=6, volumes={f"vol_{name}": shape for name, shape in SHAPES.items()},
                          folder="volumes")
        srv = ServerProc(data, work / "server.log", flags=())
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            job = c.post(f"/api/v1/models/{MODEL}/train", json={"config": TRAIN}).json()
            while c.get(f"/api/v1/jobs/{job['id']}", params={"metrics": False}).json()["state"] in ("queued", "running"):
                time.sleep(0.5)
            results = {}
            for name in [n.strip() for n in args.shapes.split(",") if n.strip()]:
                print(f"measuring {name} ...", flush=True)
                results[name] = bench_volume(c, f"vol_{name}", SHAPES[name], rounds, auto=not args.clicks_only)
                print(json.dumps({name: results[name]}), flush=True)  # kept even if a later volume is cut short
        report = {
            "benchmark": "monailabel-compat-vs-native",
            "rounds": rounds,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None},
            "model": {"name": MODEL, "train": TRAIN},
            "results": results,
        }
        print()
        print(f"{'volume':<12} {'what':<10} {'compat p50 ms':>14} {'native p50 ms':>14} {'ratio':>7}")
        for name, r in results.items():
            for kind in ("auto", "click"):
                if f"{kind}_compat_over_native" not in r:
                    continue
                print(f"{name:<12} {kind:<10} {r[f'{kind}_compat']['p50_ms']:>14.1f} "
                      f"{r[f'{kind}_native']['p50_ms']:>14.1f} {r[f'{kind}_compat_over_native']:>7.2f}")
            if "auto_route_overhead_ms" in r:
                o = r["auto_route_overhead_ms"]
                print(f"{name:<12} {'auto':<10} route overhead around the network: compat {o['compat']:.0f} ms, native "
                      f"{o['native']:.0f} ms; ratio at equal network time {r['auto_compat_over_native_same_model']:.2f}")
            f = r["first"]
            print(f"{name:<12} {'1st click':<10} {f['first_click_compat']:>14.1f} "
                  f"{f['session_open_native'] + f['first_click_native']:>14.1f}   (compat: implicit session; "
                  f"native: open {f['session_open_native']:.0f} + click {f['first_click_native']:.0f})")
        write_json(report, args.out, announce="\nwrote {}")
        return 0
    finally:
        if srv is not None:
            srv.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
