"""Server benchmark: does background work slow the API down, and what does HTTP add to a click?

Measured in one run:

1. p50 / p95 latency of ``GET /api/v1/images`` (list) and ``GET /api/v1/images/{id}/volume``
   (a 256x256x128 float32 volume, gzip NIfTI) against a real ``segloop serve`` process on
   loopback, idle, then while a training job runs and automatic inferences of the big volume run
   back to back; the ratio loaded / idle (target: p95 within 2x). The training child's scheduling
   (nice, policy, threads) is read from /proc and reported with the machine's load average, so a
   figure taken on a shared machine says so.
2. One interactive click on the 256x256x128 volume: the HTTP round trip (request → updated mask
   as gzip NIfTI received) versus the bare in-process ``InteractiveSession.add_clicks`` call
   (target: server overhead ≤ 20%), and the compact response (``?since=``: only the box the
   click changed, applied by the client to the mask it holds, on a second session) as a third
   variant. All run in *one* process on the *same* warm predictor: the
   server app is started in this process (uvicorn in a thread), the in-process call runs on the
   server's own inference worker thread (same priority, same torch thread pool), and the three
   alternate click by click (order rotated every click), so background noise hits both alike.
   Besides wall time, the process's CPU time per click is reported (all its threads: client,
   event loop, worker, torch, mask encoding): on a machine shared with other busy processes the
   wall time of the nice-10 inference worker grows with their load while the server's own
   additions do not, so the wall-time ratio alone flatters the server; the CPU-time ratio and
   the fastest samples show the overhead an idle machine would see.

The volume is made of real Task04_Hippocampus crops tiled to 256x256x128; training uses a few
hippocampus cases with their reference labels (a small network, as in the integration tests).

Usage::

    .venv/bin/python benchmarks/bench_server.py --out benchmarks/results/server.json
    .venv/bin/python benchmarks/bench_server.py --quick
    .venv/bin/python benchmarks/bench_server.py --only click     # just part 2

With ``--only`` and an existing ``--out`` file, only that part of the file is replaced (it then
carries its own ``started`` and ``loadavg_at_start``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import base_result, free_port, pct, write_json  # noqa: E402
from procstat import children_sched, cpu_times, others_busy, our_pids, proc_sched  # noqa: E402

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


def make_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """Real hippocampus crops (32^3) tiled into a float32 volume of ``shape`` (1 mm, RAS)."""
    from segloop.imaging.nifti import read_nifti, write_nifti
    from segloop.imaging.volume import Volume

    crops = []
    for f in sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:16]:
        a = read_nifti(f).array.astype(np.float32)
        a = a / max(1e-6, float(np.percentile(a, 99.5)))
        pad = [(0, max(0, 32 - s)) for s in a.shape]
        crops.append(np.pad(a, pad)[:32, :32, :32])
    big = np.zeros(shape, dtype=np.float32)
    n = 0
    for i in range(0, shape[0], 32):
        for j in range(0, shape[1], 32):
            for k in range(0, shape[2], 32):
                big[i : i + 32, j : j + 32, k : k + 32] = crops[n % len(crops)]
                n += 1
    write_nifti(Volume(big * 1000.0, np.eye(4)), path)


def build_data(work: Path, cases: int = 8, volumes: dict[str, tuple[int, int, int]] | None = None,
               folder: str = "big") -> Path:
    """A data folder of the first ``cases`` hippocampus cases with their reference labels, and the
    tiled ``volumes`` ({image name: shape}; default the 256x256x128 ``big_256x256x128``), made in
    ``work/folder`` and imported from there."""
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore

    src = work / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir(parents=True)
    for f in sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:cases]:
        shutil.copy(f, src / "images")
        shutil.copy(HIPPO / "labelsTr" / f.name, src / "labels")
    shutil.copy(HIPPO / "dataset.json", src / "labels")
    vols = work / folder
    vols.mkdir()
    for name, shape in (volumes or {"big_256x256x128": BIG_SHAPE}).items():
        make_volume(vols / f"{name}.nii.gz", shape)
    data = work / "data"
    store = open_datastore(data)
    import_paths(store, [src / "images"], labels_dir=src / "labels", author="reference")
    import_paths(store, [vols])
    store.close()
    return data


def train_first(data: Path) -> None:
    from segloop.ml.training import TrainConfig, train
    from segloop.store.local import open_datastore

    store = open_datastore(data)
    try:
        train(store, "bench", TrainConfig.from_dict({**TRAIN, "epochs": 2, "val_every": 1}))
    finally:
        store.close()


class ServerProc:
    """A ``segloop serve`` process on a free loopback port (``url``; its API at ``api``), ready when
    made; ``flags`` are added to its command line."""

    def __init__(self, data: Path, log: Path, env: dict[str, str] | None = None,
                 flags: tuple[str, ...] = ("--inference-queue", "8")) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segloop.cli", "serve", "--data", str(data), "--port", str(self.port),
             "--log-level", "warning", "--job-threads", "1", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
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


def measure(c: httpx.Client, big_id: str, rounds: int, interval: float = 0.0) -> dict[str, list[float]]:
    """``rounds`` x (list, volume fetch), ``interval`` seconds apart: spread over the phase so the
    samples see every stage of the background work, not one second of it."""
    lists, volumes = [], []
    for n in range(rounds):
        if n and interval:
            time.sleep(interval)
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


def latency_phases(c: httpx.Client, server: ServerProc, big_id: str, rounds: int, interval: float) -> dict[str, Any]:
    print("idle phase ...", file=sys.stderr)
    measure(c, big_id, 3)  # warm-up
    load_idle = os.getloadavg()
    cpu0, t0 = cpu_times(), time.monotonic()
    idle = measure(c, big_id, rounds, interval)
    others_idle = others_busy(cpu0, time.monotonic() - t0, our_pids(os.getpid()))

    print("loaded phase: training + automatic inference ...", file=sys.stderr)
    job = c.post("/models/bench/train", json={"config": TRAIN, "fine_tune": 1}).json()
    while c.get(f"/jobs/{job['id']}", params={"metrics": False}).json()["detail"].get("step", 0) < 2:
        time.sleep(0.5)  # training really runs
    stop = threading.Event()
    infer_times: list[float] = []

    def infer_loop() -> None:
        with httpx.Client(base_url=server.api, timeout=600) as ic:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = ic.post("/models/bench/infer", json={"image_id": big_id, "version": 1})
                if r.status_code == 200:
                    infer_times.append(time.perf_counter() - t0)

    inferer = threading.Thread(target=infer_loop, daemon=True)
    inferer.start()
    time.sleep(1.0)
    load_before = os.getloadavg()
    step0 = c.get(f"/jobs/{job['id']}", params={"metrics": False}).json()["detail"].get("step")
    cpu0, t0 = cpu_times(), time.monotonic()
    loaded = measure(c, big_id, rounds, interval)
    loaded_seconds = time.monotonic() - t0
    others_loaded = others_busy(cpu0, loaded_seconds, our_pids(os.getpid()))
    sched = children_sched(server.proc.pid)
    server_sched = proc_sched(server.proc.pid)
    job_state = c.get(f"/jobs/{job['id']}", params={"metrics": False}).json()
    stop.set()
    c.post(f"/jobs/{job['id']}/cancel")
    inferer.join()
    wait_job(c, job["id"])
    s_idle, s_loaded = summarize(idle), summarize(loaded)
    return {
        "idle": s_idle,
        "loaded": s_loaded,
        "ratio_p50": {k: s_loaded[k]["p50_ms"] / s_idle[k]["p50_ms"] for k in s_idle},
        "ratio_p95": {k: s_loaded[k]["p95_ms"] / s_idle[k]["p95_ms"] for k in s_idle},
        "max_ms": {"idle": {k: max(v) * 1e3 for k, v in idle.items()}, "loaded": {k: max(v) * 1e3 for k, v in loaded.items()}},
        "inferences_during_load": len(infer_times),
        "inference_seconds_p50": pct(infer_times, 50),
        "training_step_at_start_and_end": [step0, job_state["detail"].get("step")],
        "training_epoch_at_end": job_state["detail"].get("epoch"),
        "loaded_phase_seconds": round(loaded_seconds, 1),
        "loadavg_idle_phase": load_idle,
        "loadavg_loaded_phase": load_before,
        "other_processes_busy": {"idle_phase": others_idle, "loaded_phase": others_loaded},
        "server_process": server_sched,
        "job_processes": sched,
    }


def server_timing(r: httpx.Response, into: dict[str, list[float]]) -> None:
    for part in r.headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            into.setdefault(name, []).append(float(dur))


def click_phase(data: Path, big_id: str, clicks: int) -> dict[str, Any]:
    """HTTP click vs the bare in-process call, in one process on one warm predictor (see the
    module docstring)."""
    import gzip

    import nibabel as nib
    import torch
    import uvicorn

    from segloop.ml.clicks import Click
    from segloop.server import ServerSettings, create_app
    from segloop.server.maskcodec import BOX_MEDIA_TYPE, apply_box, parse_box

    port = free_port()
    app = create_app(ServerSettings(data=data, port=port, job_threads=1, inference_queue=8))
    state = app.state.segloop
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("in-process server did not start")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=600) as c:
            sess = c.post("/sessions", json={"image_id": big_id, "model": "bench", "version": 1})
            assert sess.status_code == 201, sess.text
            sid = sess.json()["id"]
            predictor = state.predictors.get("bench", 1)  # the very predictor the HTTP session uses
            image = state.store.load_image(big_id)
            local = state.pool.submit(predictor.session, image).result()

            # the compact response (``?since=``: only the box the click changed) on a second
            # session of the same image and predictor, as the web app asks for it: the client
            # keeps the mask of the last step it received and writes each box into it
            sid_box = c.post("/sessions", json={"image_id": big_id, "model": "bench", "version": 1}).json()["id"]
            held: dict[str, Any] = {"step": 0, "mask": None}

            def timed_click(click: Click) -> tuple[float, float]:
                c0, t0 = time.process_time(), time.perf_counter()
                local.add_clicks([click])
                return time.perf_counter() - t0, time.process_time() - c0

            rng = np.random.default_rng(0)
            points = [[int(rng.integers(16, s - 16)) for s in BIG_SHAPE] for _ in range(clicks + 2)]
            cpu0, t0 = cpu_times(), time.monotonic()
            http_times, server_seconds, local_times = [], [], []
            http_cpu, local_cpu, sizes = [], [], []
            box_times, box_seconds, box_cpu, box_sizes, box_apply = [], [], [], [], []
            boxes = 0
            timing: dict[str, list[float]] = {}
            box_timing: dict[str, list[float]] = {}
            for n, p in enumerate(points):
                value = 1 + n % 2
                click = Click(value, (p[0], p[1], p[2]))
                body = {"clicks": [{"class": value, "points": [p]}]}

                def http(n: int = n, body: dict[str, Any] = body) -> tuple[float, float, float]:
                    c0, t0 = time.process_time(), time.perf_counter()
                    r = c.post(f"/sessions/{sid}/clicks", json=body)
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                    assert r.status_code == 200 and len(r.content) > 100, r.text
                    if n >= 2:
                        sizes.append(len(r.content))
                        server_timing(r, timing)
                    return dt, float(r.headers["x-segloop-seconds"]), dc

                def http_box(n: int = n, body: dict[str, Any] = body) -> tuple[float, float, float]:
                    nonlocal boxes
                    c0, t0 = time.process_time(), time.perf_counter()
                    r = c.post(f"/sessions/{sid_box}/clicks", params={"since": held["step"]}, json=body)
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                    assert r.status_code == 200, r.text
                    a0 = time.perf_counter()
                    if r.headers["content-type"] == BOX_MEDIA_TYPE:
                        assert int(r.headers["x-segloop-base-step"]) == held["step"]
                        apply_box(held["mask"], parse_box(r.headers["x-segloop-box"]), r.content)
                        boxes += n >= 2
                    else:
                        held["mask"] = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj).copy()
                    held["step"] = int(r.headers["x-segloop-step"])
                    if n >= 2:
                        box_apply.append(time.perf_counter() - a0)
                        box_sizes.append(len(r.content))
                        server_timing(r, box_timing)
                    return dt, float(r.headers["x-segloop-seconds"]), dc

                def in_process(click: Click = click) -> tuple[float, float]:
                    return state.pool.submit(timed_click, click).result()

                # the three alternate, the order rotating click by click
                got: dict[str, Any] = {}
                calls: list[tuple[str, Callable[[], Any]]] = [("http", http), ("box", http_box), ("local", in_process)]
                for name, fn in calls[n % 3 :] + calls[: n % 3]:
                    got[name] = fn()
                (dt, ss, dc), (db, sb, cb), (dl, cl) = got["http"], got["box"], got["local"]
                if n >= 2:  # warm-up
                    http_times.append(dt)
                    server_seconds.append(ss)
                    local_times.append(dl)
                    http_cpu.append(dc)
                    local_cpu.append(cl)
                    box_times.append(db)
                    box_seconds.append(sb)
                    box_cpu.append(cb)
            # the boxes rebuilt the whole mask the server holds
            whole = c.get(f"/sessions/{sid_box}/label").content
            assert np.array_equal(held["mask"], np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(whole)).dataobj))
            c.delete(f"/sessions/{sid_box}")
            others = others_busy(cpu0, time.monotonic() - t0, our_pids(os.getpid()))
            c.delete(f"/sessions/{sid}")
    finally:
        server.should_exit = True
        thread.join(60)
    http_p50, local_p50 = statistics.median(http_times), statistics.median(local_times)
    paired = [h - loc for h, loc in zip(http_times, local_times, strict=True)]
    box_paired = [h - loc for h, loc in zip(box_times, local_times, strict=True)]
    return {
        "http_p50_ms": http_p50 * 1e3,
        "http_p95_ms": pct(http_times, 95) * 1e3,
        "server_reported_p50_ms": statistics.median(server_seconds) * 1e3,
        "in_process_p50_ms": local_p50 * 1e3,
        "in_process_p95_ms": pct(local_times, 95) * 1e3,
        "overhead_ratio_p50": http_p50 / local_p50 - 1.0,
        # click by click: HTTP minus the in-process call made right before/after it
        "paired_overhead_p50_ms": statistics.median(paired) * 1e3,
        "paired_overhead_ratio": statistics.median(paired) / local_p50,
        # what HTTP adds on top of the same session call inside the server (parse, encode, transfer)
        "http_minus_server_p50_ms": statistics.median([h - s for h, s in zip(http_times, server_seconds, strict=True)]) * 1e3,
        "n": len(http_times),
        # the fastest samples (least disturbed by other processes) and their ratio
        "http_min_ms": min(http_times) * 1e3,
        "in_process_min_ms": min(local_times) * 1e3,
        "overhead_ratio_min": min(http_times) / min(local_times) - 1.0,
        # CPU time of this process per click (all threads), which other processes' load hardly changes
        "http_cpu_p50_ms": statistics.median(http_cpu) * 1e3,
        "in_process_cpu_p50_ms": statistics.median(local_cpu) * 1e3,
        "overhead_ratio_cpu_p50": statistics.median(http_cpu) / statistics.median(local_cpu) - 1.0,
        "response_bytes_p50": statistics.median(sizes),
        # torch's intra-op threads here. They were first started by this process's nice-0 main
        # thread (the set-up training), unlike in `segloop serve`, where the inference worker
        # starts them: bench_click_priority.py measures clicks of real serve processes with a
        # busy neighbour (spinning nice-10 OpenMP threads made them ~11x slower)
        "torch_threads": torch.get_num_threads(),
        # the server's own account of an HTTP click (Server-Timing): waiting for the worker,
        # parsing the clicks, the session call, encoding the mask
        "server_timing_p50_ms": {k: statistics.median(v) for k, v in timing.items()},
        # the compact response (?since=: the changed box only), alternating with the two above
        "compact": {
            "http_p50_ms": statistics.median(box_times) * 1e3,
            "http_p95_ms": pct(box_times, 95) * 1e3,
            "overhead_ratio_p50": statistics.median(box_times) / local_p50 - 1.0,
            "paired_overhead_p50_ms": statistics.median(box_paired) * 1e3,
            "paired_overhead_ratio": statistics.median(box_paired) / local_p50,
            "http_minus_server_p50_ms": statistics.median([h - s for h, s in zip(box_times, box_seconds, strict=True)]) * 1e3,
            "http_min_ms": min(box_times) * 1e3,
            "overhead_ratio_min": min(box_times) / min(local_times) - 1.0,
            "http_cpu_p50_ms": statistics.median(box_cpu) * 1e3,
            "overhead_ratio_cpu_p50": statistics.median(box_cpu) / statistics.median(local_cpu) - 1.0,
            "response_bytes_p50": statistics.median(box_sizes),
            "box_responses": boxes,
            # the client writing the box into its mask (not in the times above, as the full
            # mask's decoding is not in its)
            "client_apply_p50_ms": statistics.median(box_apply) * 1e3,
            "server_timing_p50_ms": {k: statistics.median(v) for k, v in box_timing.items()},
        },
        "loadavg": os.getloadavg(),
        "other_processes_busy": others,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=80, help="requests of each kind per phase")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between rounds (spreads a phase out)")
    ap.add_argument("--clicks", type=int, default=15, help="clicks measured each way")
    ap.add_argument("--quick", action="store_true", help="smoke run (fewer rounds and clicks)")
    ap.add_argument("--only", choices=("all", "latency", "click"), default="all", help="run one part only")
    ap.add_argument("--job-idle-class", choices=("on", "off"), default="on",
                    help="training child in SCHED_IDLE (the server's default) or at nice 10 only")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.clicks, args.interval = 15, 5, 0.05

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    results: dict[str, Any] = {
        **base_result(),
        "volume_shape": list(BIG_SHAPE),
        "rounds": args.rounds,
        "interval_s": args.interval,
    }
    server: ServerProc | None = None
    big_id = "big_256x256x128"
    try:
        print("preparing data ...", file=sys.stderr)
        data = build_data(work)
        print("training a first model version (in this process: set-up, not measured) ...", file=sys.stderr)
        train_first(data)
        results["job_idle_class"] = args.job_idle_class
        server = ServerProc(data, work / "server.log", {"SEGLOOP_JOB_IDLE_CLASS": "1" if args.job_idle_class == "on" else "0"})
        c = httpx.Client(base_url=server.api, timeout=600)
        results["volume_bytes"] = len(c.get(f"/images/{big_id}/volume").content)
        if args.only in ("all", "latency"):
            results["latency"] = latency_phases(c, server, big_id, args.rounds, args.interval)
        c.close()
        server.stop()
        server = None
        if args.only in ("all", "click"):
            print("interactive click: HTTP vs in-process (one process, one predictor, interleaved) ...", file=sys.stderr)
            results["click"] = click_phase(data, big_id, args.clicks)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nserver benchmark ({results['machine']['cpus']} CPUs, load average at start "
          f"{results['loadavg_at_start'][0]:.2f}); volume {BIG_SHAPE}, {results['volume_bytes'] / 1e6:.1f} MB gzip NIfTI")
    lat = results.get("latency")
    if lat:
        print(f"{'call':<10}{'idle p50':>10}{'idle p95':>10}{'load p50':>10}{'load p95':>10}{'p50 x':>8}{'p95 x':>8}")
        for k in ("list", "volume"):
            i, lo = lat["idle"][k], lat["loaded"][k]
            print(f"{k:<10}{i['p50_ms']:>9.1f}m{i['p95_ms']:>9.1f}m{lo['p50_ms']:>9.1f}m{lo['p95_ms']:>9.1f}m"
                  f"{lat['ratio_p50'][k]:>8.2f}{lat['ratio_p95'][k]:>8.2f}")
        steps = lat["training_step_at_start_and_end"]
        print(f"(load: 1 training job (step {steps[0]} -> {steps[1]} of epoch {lat['training_epoch_at_end']} "
              f"during the {lat['loaded_phase_seconds']} s phase) + {lat['inferences_during_load']} "
              f"finished automatic inference(s) of the volume, one in flight; load average "
              f"{lat['loadavg_loaded_phase'][0]:.2f})")
        for j in lat["job_processes"]:
            print(f"  job process {j['pid']}: nice {j['nice']}, {j['policy']}, {j['threads']} threads {j['thread_sched']}")
        for phase, busy in lat["other_processes_busy"].items():
            for b in busy:
                print(f"  not ours, busy during the {phase}: {b['cpu_share']:.2f} core  {b['cmd'][:80]}")
    ck = results.get("click")
    if ck:
        print(f"click      HTTP p50 {ck['http_p50_ms']:.1f} ms (server-side {ck['server_reported_p50_ms']:.1f} ms)  "
              f"in-process p50 {ck['in_process_p50_ms']:.1f} ms  overhead {ck['overhead_ratio_p50'] * 100:+.1f}% "
              f"(paired {ck['paired_overhead_p50_ms']:.1f} ms = {ck['paired_overhead_ratio'] * 100:+.1f}%; "
              f"HTTP minus server-side p50 {ck['http_minus_server_p50_ms']:.1f} ms; n={ck['n']})")
        print(f"  fastest: HTTP {ck['http_min_ms']:.1f} ms, in-process {ck['in_process_min_ms']:.1f} ms "
              f"({ck['overhead_ratio_min'] * 100:+.1f}%); CPU time p50: HTTP {ck['http_cpu_p50_ms']:.1f} ms, "
              f"in-process {ck['in_process_cpu_p50_ms']:.1f} ms ({ck['overhead_ratio_cpu_p50'] * 100:+.1f}%); "
              f"response {ck['response_bytes_p50'] / 1e6:.2f} MB; load average {ck['loadavg'][0]:.2f}")
        print("  server timing p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ck["server_timing_p50_ms"].items()))
        bx = ck.get("compact")
        if bx:
            print(f"  compact (?since=, the changed box): HTTP p50 {bx['http_p50_ms']:.1f} ms p95 {bx['http_p95_ms']:.1f} ms  "
                  f"overhead {bx['overhead_ratio_p50'] * 100:+.1f}% (full mask {ck['overhead_ratio_p50'] * 100:+.1f}%; "
                  f"paired {bx['paired_overhead_p50_ms']:.1f} ms = {bx['paired_overhead_ratio'] * 100:+.1f}%; "
                  f"fastest {bx['overhead_ratio_min'] * 100:+.1f}%; CPU {bx['overhead_ratio_cpu_p50'] * 100:+.1f}%)  "
                  f"response {bx['response_bytes_p50'] / 1e3:.1f} kB ({bx['box_responses']} of {ck['n']} as boxes)")
            print("  compact server timing p50 (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in bx["server_timing_p50_ms"].items()))
        for b in ck["other_processes_busy"]:
            print(f"  not ours, busy during the clicks: {b['cpu_share']:.2f} core  {b['cmd'][:80]}")
    out = results
    if args.out and args.only != "all" and args.out.exists():
        # one part re-measured: the other part's figures stay, with their own date and load
        out = json.loads(args.out.read_text())
        part = "latency" if args.only == "latency" else "click"
        out[part] = {**results[part], "started": results["started"], "loadavg_at_start": results["loadavg_at_start"]}
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
