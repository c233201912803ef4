"""Scaling of active-learning scoring on Ray: images scored per minute with 1 vs 2 Ray workers
(issue 14, "Measured").

A real Ray cluster on loopback (tests/scaleout/_ray_cluster.py: a head and one worker node, one
CPU each, so two job slots) and a `JobRunner` on it through Ray Client, as ``segloop serve --jobs
ray://...`` runs. A tiny model is trained in-process on small labelled cases, then a pool of
larger synthetic volumes is scored with MC dropout:

- **1 worker**: one ``score`` job over the whole pool (one Ray task);
- **2 workers**: two ``score`` jobs over the two halves of the pool, at once (two tasks, one per
  node) — how a selection over a large pool is split across a cluster today. The two halves'
  scores land in the same cache, which ``GET /next`` / ``segloop select`` then read.

Each configuration runs ``--repeats`` times, alternating, with a new seed each time so that no
run reads another's cached scores. Reported: wall time from submit to the last job's end, images
per minute, the ratio 2-worker / 1-worker (median of the runs), the time spent scoring inside the
tasks (the jobs' own ``seconds``) and the fixed cost per job (Ray worker start, torch import,
model load), and the machine's load average: this machine has 2 cores shared with other work, so
2x is the ceiling and the fixed per-job cost and the competing load pull the ratio below it.

Usage::

    .venv/bin/python benchmarks/bench_ray.py --out benchmarks/results/ray-scaling.json
    .venv/bin/python benchmarks/bench_ray.py --quick
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.unit.al_synthetic import make_store, synthetic_case, tiny_train_config  # noqa: E402

from benchlib import loadavg, log, machine, ratio, ray_cluster, write_result  # noqa: E402


def task_start(runner: Any, job_id: str) -> tuple[str | None, datetime | None]:
    """(Ray node id, when the task started on it) from the job's first log line."""
    for entry in runner.db.log(job_id):
        m = re.search(r"running on Ray node \S+ (\w+)", entry["line"])
        if m:
            return m.group(1), datetime.fromisoformat(entry["time"])
    return None, None


def one_run(runner: Any, pool: list[str], workers: int, seed: int, passes: int) -> dict[str, Any]:
    shards = [pool[i::workers] for i in range(workers)]
    params = {"passes": passes, "seed": seed}
    t0 = time.perf_counter()
    submitted = datetime.now(UTC)
    ids = [runner.submit("score", {"model": "seg", "strategy": "mc-dropout", "strategy_params": params,
                                   "pool": shard, "device": "cpu", "batch_size": 4}).id for shard in shards]
    jobs = [runner.wait(job_id, timeout=900) for job_id in ids]
    wall = time.perf_counter() - t0
    bad = [(j.state, j.error) for j in jobs if j.state != "done"]
    if bad:
        raise RuntimeError(f"score job(s) did not finish: {bad}")
    scored = sum(int(j.result["scored"]) for j in jobs if j.result)
    inside = [float(j.result["seconds"]) for j in jobs if j.result]
    starts = [task_start(runner, j.id) for j in jobs]
    to_start = [round((t - submitted).total_seconds(), 2) if t is not None else None for _, t in starts]
    return {
        "workers": workers,
        "seed": seed,
        "images": scored,
        "wall_seconds": round(wall, 2),
        "images_per_minute": round(60.0 * scored / wall, 2),
        # per job: submit → its task runs on a worker (Ray worker process start, imports), then
        # the scoring itself (model load + passes, the job's own clock)
        "seconds_to_task_start": to_start,
        "scoring_seconds_per_job": [round(s, 2) for s in inside],
        "nodes": sorted({n or "?" for n, _ in starts}),
        "loadavg_1m": loadavg()[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=16, help="images to score (default 16)")
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 64, 48], help="pool volume shape (default 48 64 48)")
    ap.add_argument("--passes", type=int, default=8, help="MC-dropout passes (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration (default 2)")
    ap.add_argument("--quick", action="store_true", help="8 images, 4 passes, one run each")
    ap.add_argument("--out", type=Path, help="write the result JSON here")
    args = ap.parse_args()
    if args.quick:
        args.pool, args.passes, args.repeats = 8, 4, 1

    from segloop.imaging.volume import Volume
    from segloop.jobs import JobRunner
    from segloop.ml.training import train

    temp = Path(tempfile.mkdtemp(prefix="sgbray-", dir="/tmp"))
    folder = temp / "data"
    store, _, _, _ = make_store(folder, n_train=4, n_pool=0)
    rng = np.random.default_rng(1)
    pool = []
    for n in range(args.pool):
        image, _ = synthetic_case(rng, shape=tuple(args.shape))
        pool.append(store.add_image(Volume(image * 100.0, np.eye(4)), f"pool{n:02d}", "bench").id)
    t = time.perf_counter()
    train(store, "seg", tiny_train_config(epochs=1, steps_per_epoch=2), device="cpu")
    log(f"model trained in {time.perf_counter() - t:.1f}s; pool {args.pool} x {args.shape}")

    runs: list[dict[str, Any]] = []
    with ray_cluster(temp) as cluster:
        runner = JobRunner(folder, mode=cluster.address, max_running=4, child_threads=1, poll_interval=0.1)
        runner.start()
        try:
            # warm-up: the first task on each node pays for imports that later ones find in the page cache
            one_run(runner, pool[:2], 2, seed=1000, passes=2)
            seed = 0
            for _ in range(args.repeats):
                for workers in (1, 2):
                    seed += 1
                    run = one_run(runner, pool, workers, seed, args.passes)
                    runs.append(run)
                    log(json.dumps(run))
        finally:
            runner.stop(timeout=20)

    def median_rate(workers: int) -> float:
        return statistics.median(r["images_per_minute"] for r in runs if r["workers"] == workers)

    result = {
        "benchmark": "bench_ray: images scored per minute, 1 vs 2 Ray workers",
        "machine": machine(),
        "config": {"pool": args.pool, "shape": args.shape, "strategy": "mc-dropout", "passes": args.passes,
                   "repeats": args.repeats, "nodes": "head + 1 worker, 1 CPU each, loopback, Ray Client"},
        "runs": runs,
        "images_per_minute": {"1_worker": round(median_rate(1), 2), "2_workers": round(median_rate(2), 2)},
        "ratio_2_vs_1": ratio(median_rate(2), median_rate(1)),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
