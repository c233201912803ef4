"""Server benchmark: does background work slow the API down, and what does HTTP add to a click?

Measured in one run against a real ``segloop serve`` process on loopback:

1. p50 / p95 latency of ``GET /api/v1/images`` (list) and ``GET /api/v1/images/{id}/volume``
   (a 256x256x128 float32 volume, gzip NIfTI) on the idle server, then the same calls while a
   training job runs and automatic inferences on the big volume run back to back; the ratio
   loaded / idle (target: p95 within 2x).
2. One interactive click on the 256x256x128 volume: HTTP round trip (request → updated mask as
   gzip NIfTI received) versus the in-process ``InteractiveSession.add_clicks`` call on the same
   model and volume (target: server overhead ≤ 20%).

The volume is made of real Task04_Hippocampus crops tiled to 256x256x128; training uses a few
hippocampus cases with their reference labels (a small network, as in the integration tests).

Usage::

    .venv/bin/python benchmarks/bench_server.py --out benchmarks/results/server.json
    .venv/bin/python benchmarks/bench_server.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIPPO = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
BIG_SHAPE = (256, 256, 128)
TRAIN = {
    "epochs": 10_000,  # runs until cancelled at the end of the loaded phase
    "batch_size": 2,
    "patch_size": [32, 32, 32],
    "val_split": 0.25,
    "val_every": 5,
    "network": {"channels": [8, 16, 32], "num_res_units": 1},
}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_big_volume(path: Path) -> None:
    """Real hippocampus crops tiled into a 256x256x128 float32 volume (1 mm, RAS)."""
    from segloop.imaging.nifti import read_nifti, write_nifti
    from segloop.imaging.volume import Volume

    files = sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:16]
    crops = []
    for f in files:
        a = read_nifti(f).array.astype(np.float32)
        a = a / max(1e-6, float(np.percentile(a, 99.5)))
        crops.append(np.pad(a, [(0, max(0, 32 - a.shape[0])), (0, max(0, 32 - a.shape[1])), (0, max(0, 32 - a.shape[2]))])[:32, :32, :32])
    big = np.zeros(BIG_SHAPE, dtype=np.float32)
    n = 0
    for i in range(0, BIG_SHAPE[0], 32):
        for j in range(0, BIG_SHAPE[1], 32):
            for k in range(0, BIG_SHAPE[2], 32):
                big[i : i + 32, j : j + 32, k : k + 32] = crops[n % len(crops)]
                n += 1
    write_nifti(Volume(big * 1000.0, np.eye(4)), path)


def build_data(work: Path) -> Path:
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore

    src = work / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir(parents=True)
    cases = sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:8]
    for f in cases:
        shutil.copy(f, src / "images")
        shutil.copy(HIPPO / "labelsTr" / f.name, src / "labels")
    shutil.copy(HIPPO / "dataset.json", src / "labels")
    big = work / "big" / "big_256x256x128.nii.gz"
    big.parent.mkdir()
    make_big_volume(big)
    data = work / "data"
    store = open_datastore(data)
    import_paths(store, [src / "images"], labels_dir=src / "labels", author="reference")
    import_paths(store, [big])
    store.close()
    return data


class ServerProc:
    def __init__(self, data: Path, log: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        self.log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segloop.cli", "serve", "--data", str(data), "--port", str(self.port),
             "--log-level", "warning", "--job-threads", "1", "--inference-queue", "8"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        for _ in range(600):
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_job(c: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job = c.get(f"/jobs/{job_id}", params={"metrics": False}).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)


def measure(c: httpx.Client, big_id: str, rounds: int) -> dict[str, list[float]]:
    lists, volumes = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = c.get("/images", params={"limit": 100})
        lists.append(time.perf_counter() - t0)
        assert r.status_code == 200
        t0 = time.perf_counter()
        r = c.get(f"/images/{big_id}/volume")
        volumes.append(time.perf_counter() - t0)
        assert r.status_code == 200 and len(r.content) > 1_000_000
    return {"list": lists, "volume": volumes}


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50_ms": pct(v, 50) * 1e3, "p95_ms": pct(v, 95) * 1e3, "n": len(v)} for k, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60, help="requests of each kind per phase")
    ap.add_argument("--clicks", type=int, default=15, help="clicks measured each way")
    ap.add_argument("--quick", action="store_true", help="smoke run (fewer rounds and clicks)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.clicks = 15, 5

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "volume_shape": list(BIG_SHAPE),
    }
    server: ServerProc | None = None
    try:
        print("preparing data ...", file=sys.stderr)
        data = build_data(work)
        server = ServerProc(data, work / "server.log")
        c = httpx.Client(base_url=server.api, timeout=600)
        big_id = "big_256x256x128"
        results["volume_bytes"] = len(c.get(f"/images/{big_id}/volume").content)

        print("training a first model version ...", file=sys.stderr)
        first = c.post("/models/bench/train", json={"config": {**TRAIN, "epochs": 2, "val_every": 1}}).json()
        assert wait_job(c, first["id"])["state"] == "done"

        print("idle phase ...", file=sys.stderr)
        measure(c, big_id, 3)  # warm-up
        idle = measure(c, big_id, args.rounds)

        print("loaded phase: training + automatic inference ...", file=sys.stderr)
        job = c.post("/models/bench/train", json={"config": TRAIN, "fine_tune": 1}).json()
        while c.get(f"/jobs/{job['id']}", params={"metrics": False}).json()["detail"].get("step", 0) < 2:
            time.sleep(0.5)  # training really runs
        stop = threading.Event()
        infer_times: list[float] = []

        def infer_loop() -> None:
            with httpx.Client(base_url=server.api, timeout=600) as ic:  # type: ignore[union-attr]
                while not stop.is_set():
                    t0 = time.perf_counter()
                    r = ic.post("/models/bench/infer", json={"image_id": big_id, "version": 1})
                    if r.status_code == 200:
                        infer_times.append(time.perf_counter() - t0)

        inferer = threading.Thread(target=infer_loop, daemon=True)
        inferer.start()
        time.sleep(1.0)
        loaded = measure(c, big_id, args.rounds)
        stop.set()
        c.post(f"/jobs/{job['id']}/cancel")
        inferer.join()
        wait_job(c, job["id"])
        s_idle, s_loaded = summarize(idle), summarize(loaded)
        results["latency"] = {
            "idle": s_idle,
            "loaded": s_loaded,
            "ratio_p50": {k: s_loaded[k]["p50_ms"] / s_idle[k]["p50_ms"] for k in s_idle},
            "ratio_p95": {k: s_loaded[k]["p95_ms"] / s_idle[k]["p95_ms"] for k in s_idle},
            "inferences_during_load": len(infer_times),
            "inference_seconds_p50": pct(infer_times, 50),
        }

        print("interactive click: HTTP vs in-process (interleaved) ...", file=sys.stderr)
        from segloop.ml.clicks import Click
        from segloop.ml.predictor import Predictor
        from segloop.store.local import open_datastore

        store = open_datastore(data)
        predictor = Predictor.load(store, "bench", 1)
        session = predictor.session(store.load_image(big_id))
        sess = c.post("/sessions", json={"image_id": big_id, "model": "bench", "version": 1}).json()
        rng = np.random.default_rng(0)
        points = [[int(rng.integers(16, s - 16)) for s in BIG_SHAPE] for _ in range(args.clicks + 2)]
        http_times, server_seconds, local_times = [], [], []
        for n, p in enumerate(points):
            # the same click both ways, back to back, so background load hits both alike
            t0 = time.perf_counter()
            r = c.post(f"/sessions/{sess['id']}/clicks", json={"clicks": [{"class": 1 + n % 2, "points": [p]}]})
            dt = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            t0 = time.perf_counter()
            session.add_clicks([Click(1 + n % 2, (p[0], p[1], p[2]))])
            dl = time.perf_counter() - t0
            if n >= 2:  # warm-up
                http_times.append(dt)
                server_seconds.append(float(r.headers["x-segloop-seconds"]))
                local_times.append(dl)
        c.delete(f"/sessions/{sess['id']}")
        store.close()
        http_p50, local_p50 = statistics.median(http_times), statistics.median(local_times)
        results["click"] = {
            "http_p50_ms": http_p50 * 1e3,
            "http_p95_ms": pct(http_times, 95) * 1e3,
            "server_reported_p50_ms": statistics.median(server_seconds) * 1e3,
            "in_process_p50_ms": local_p50 * 1e3,
            "in_process_p95_ms": pct(local_times, 95) * 1e3,
            "overhead_ratio_p50": http_p50 / local_p50 - 1.0,
            # what HTTP adds on top of the same session call inside the server (encode + transfer)
            "http_minus_server_p50_ms": statistics.median([h - s for h, s in zip(http_times, server_seconds, strict=True)]) * 1e3,
            "n": len(http_times),
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    lat = results["latency"]
    print(f"\nserver benchmark ({results['machine']['cpus']} CPUs); volume {BIG_SHAPE}, {results['volume_bytes'] / 1e6:.1f} MB gzip NIfTI")
    print(f"{'call':<10}{'idle p50':>10}{'idle p95':>10}{'load p50':>10}{'load p95':>10}{'p50 x':>8}{'p95 x':>8}")
    for k in ("list", "volume"):
        i, lo = lat["idle"][k], lat["loaded"][k]
        print(f"{k:<10}{i['p50_ms']:>9.1f}m{i['p95_ms']:>9.1f}m{lo['p50_ms']:>9.1f}m{lo['p95_ms']:>9.1f}m"
              f"{lat['ratio_p50'][k]:>8.2f}{lat['ratio_p95'][k]:>8.2f}")
    print(f"(load: 1 training job + {lat['inferences_during_load']} automatic inference(s) of the volume, "
          f"p50 {lat['inference_seconds_p50']:.1f} s each)")
    ck = results["click"]
    print(f"click      HTTP p50 {ck['http_p50_ms']:.1f} ms (server-side {ck['server_reported_p50_ms']:.1f} ms)  "
          f"in-process p50 {ck['in_process_p50_ms']:.1f} ms  overhead {ck['overhead_ratio_p50'] * 100:+.0f}% "
          f"(HTTP minus server-side p50 {ck['http_minus_server_p50_ms']:.1f} ms)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
