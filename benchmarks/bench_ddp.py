"""Training on 1 vs 2 Ray workers (DistributedDataParallel) on the same step budget: validation Dice
and time (issue 14: "gives the same validation Dice as one worker within noise on the same step
budget").

A real Ray cluster on loopback (tests/scaleout/_ray_cluster.py: a head and one worker node, one CPU
each) and a `JobRunner` on it through Ray Client, as ``segloop serve --jobs ray://...`` runs. Data:
a subset of Task04_Hippocampus (``--cases`` ids: sorted, shuffled with seed 0, the first N), all
labelled final; the training holds out ``--val-split`` of them (seeded by the run's seed) and
validates on them (automatic, click-free Dice, mean of the two classes).

Per seed, two train jobs with the same config, differing only in ``workers``:

- **1 worker**: one Ray task, the global batch (``--batch``, default 2) on one rank;
- **2 workers**: the task (rank 0) and one `RankActor` (rank 1), half the batch per rank per step,
  DDP averaging the two ranks' gradients: the same global batch and the same number of steps.

Every rank runs with one torch thread. Several seeds give the seed-to-seed spread of one worker's
Dice (the noise the 2-worker Dice is compared with); the per-seed difference is paired (same split,
same initial weights). Also reported: training-loop time per step (the job's own clock minus
validation), wall time from submit to the version, and the load average (2 shared cores: other
people's work competes for them).

Usage::

    .venv/bin/python benchmarks/bench_ddp.py --steps 250 --seeds 3 --out benchmarks/results/ddp.json
    .venv/bin/python benchmarks/bench_ddp.py --batch 4 --steps 250 --seeds 1 --out benchmarks/results/ddp-batch4.json
    .venv/bin/python benchmarks/bench_ddp.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchlib import loadavg, log, machine, ratio, ray_cluster, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"


def fill_store(root: Path, n: int) -> Any:
    from segloop.imaging.nifti import read_nifti
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema

    ids = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "imagesTr").glob("*.nii.gz"))
    chosen = sorted(ids[i] for i in np.random.default_rng(0).permutation(len(ids))[:n])
    store = open_datastore(root)
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "Anterior", (255, 0, 0)),
                                  LabelClass(2, "Posterior", (0, 255, 0)))))
    for case in chosen:
        image = read_nifti(DATA / "imagesTr" / f"{case}.nii.gz")
        label = read_nifti(DATA / "labelsTr" / f"{case}.nii.gz")
        rec = store.add_image(image, case, f"msd:{case}", modality="MR")
        store.save_label(rec.id, np.asarray(label.array).astype(np.uint8), author="msd", status="final")
    return store


def _distributed(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """The version's ``metrics.distributed`` without the shards; with each rank's time in the per-step
    agreement (waiting there = waiting for the slower rank)."""
    if not d:
        return None
    out = {k: v for k, v in d.items() if k != "ranks"}
    out["sync_seconds_per_rank"] = [r.get("sync_seconds") for r in sorted(d["ranks"], key=lambda r: r["rank"])]
    return out


def one_run(runner: Any, config: dict[str, Any], workers: int, seed: int) -> dict[str, Any]:
    cfg = {**config, "workers": workers, "seed": seed}
    t0 = time.perf_counter()
    job = runner.submit("train", {"model": f"w{workers}s{seed}", "config": cfg, "device": "cpu"})
    done = runner.wait(job.id, timeout=1800)
    wall = time.perf_counter() - t0
    if done.state != "done" or not done.result:
        raise RuntimeError(f"training ({workers} worker(s), seed {seed}) ended {done.state}: {done.error}")
    m = done.result["model_version"]["metrics"]
    loop = float(m["seconds"]) - float(m["validation_seconds"])
    return {
        "workers": workers,
        "seed": seed,
        "val_mean_dice": round(float(m["val_mean_dice"]), 4),
        "val_dice": {k: round(float(v), 4) for k, v in (m["val_dice"] or {}).items()},
        "best_epoch": m["best_epoch"],
        "steps": m["steps"],
        "train_images": m["train_images"],
        "val_images": len(m["validated_on"]),
        "seconds_in_job": m["seconds"],
        "validation_seconds": m["validation_seconds"],
        "seconds_per_step": round(loop / max(1, int(m["steps"])), 3),
        "wall_seconds": round(wall, 1),
        "distributed": _distributed(m.get("distributed")),
        "loadavg_1m": loadavg()[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=48, help="Task04 cases in the store (default 48)")
    ap.add_argument("--val-split", type=float, default=0.25, help="held out for validation (default 0.25)")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default 300)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds (each: a 1-worker and a 2-worker run; default 2)")
    ap.add_argument("--batch", type=int, default=2, help="global batch (default 2; 2 workers: half each)")
    ap.add_argument("--quick", action="store_true", help="16 cases, 40 steps, one seed")
    ap.add_argument("--out", type=Path, help="write the result JSON here")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.steps, args.seeds = 16, 40, 1
    if not DATA.is_dir():
        print(f"{DATA} not found", file=sys.stderr)
        return 2
    steps_per_epoch = 50 if args.steps >= 100 else args.steps // 2
    epochs = max(1, args.steps // steps_per_epoch)
    config = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": args.batch, "lr": 2e-3,
              "val_split": args.val_split, "val_every": max(1, epochs // 2), "val_max_images": 16,
              "val_budget": 1.0, "num_threads": 1}

    from segloop.jobs import JobRunner

    temp = Path(tempfile.mkdtemp(prefix="sgbddp-", dir="/tmp"))
    folder = temp / "data"
    fill_store(folder, args.cases).close()
    runs: list[dict[str, Any]] = []
    with ray_cluster(temp) as cluster:
        runner = JobRunner(folder, mode=cluster.address, max_running=1, child_threads=1, poll_interval=0.2)
        runner.start()
        try:
            for seed in range(args.seeds):
                for workers in ((1, 2) if seed % 2 == 0 else (2, 1)):  # alternate which goes first
                    run = one_run(runner, config, workers, seed)
                    runs.append(run)
                    log(json.dumps(run))
        finally:
            runner.stop(timeout=30)

    def of(workers: int, key: str) -> list[float]:
        return [float(r[key]) for r in sorted(runs, key=lambda r: r["seed"]) if r["workers"] == workers]

    d1, d2 = of(1, "val_mean_dice"), of(2, "val_mean_dice")
    diffs = [b - a for a, b in zip(d1, d2, strict=True)]
    spread = statistics.stdev(d1) if len(d1) > 1 else None
    s1, s2 = of(1, "seconds_per_step"), of(2, "seconds_per_step")
    result: dict[str, Any] = {
        "benchmark": "bench_ddp: validation Dice and time per step, 1 vs 2 Ray workers (DDP), same step budget",
        "machine": machine(),
        "config": {**config, "cases": args.cases, "steps": epochs * steps_per_epoch, "seeds": args.seeds,
                   "data": "Task04_Hippocampus subset", "threads_per_rank": 1,
                   "nodes": "head + 1 worker, 1 CPU each, loopback, Ray Client"},
        "runs": runs,
        "val_mean_dice": {"1_worker": [round(x, 4) for x in d1], "2_workers": [round(x, 4) for x in d2],
                          "paired_difference_2_minus_1": [round(x, 4) for x in diffs],
                          "mean_difference": round(statistics.mean(diffs), 4),
                          "seed_spread_1_worker_sd": round(spread, 4) if spread is not None else None},
        "seconds_per_step": {"1_worker": round(statistics.median(s1), 3), "2_workers": round(statistics.median(s2), 3),
                             "speedup_2_vs_1": ratio(statistics.median(s1), statistics.median(s2))},
    }
    print(f"\n{'seed':>4} {'workers':>7} {'val Dice':>9} {'s/step':>7} {'wall s':>7} {'load':>5}")
    for r in sorted(runs, key=lambda r: (r["seed"], r["workers"])):
        print(f"{r['seed']:>4} {r['workers']:>7} {r['val_mean_dice']:>9.4f} {r['seconds_per_step']:>7.3f} "
              f"{r['wall_seconds']:>7.1f} {r['loadavg_1m']:>5.2f}")
    print(f"mean paired difference (2 - 1 workers): {result['val_mean_dice']['mean_difference']:+.4f}; "
          f"1-worker seed spread (sd): {result['val_mean_dice']['seed_spread_1_worker_sd']}; "
          f"speed-up per step: {result['seconds_per_step']['speedup_2_vs_1']}x\n")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
