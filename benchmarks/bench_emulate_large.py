"""A default ``segloop emulate`` on a large made-up dataset: does it finish in time, and learn?
(issue 13, part 4).

The issue's held-back check runs ``segloop emulate --compare random,entropy,full`` with its
defaults on 20 whole-brain MR volumes of 256x256x160 with two thin classes, on 2 cores, and asks
for < 90 minutes. We do not have such data, so this benchmark makes a stand-in of the same size
and kind (``make_dataset``): a head-shaped ellipsoid with a skull shell, grey/white texture from
smoothed noise, a bias field and Rician-like noise, and two thin structures per case — class 1 a
pair of curved tubes (radius 2-3 voxels, hippocampus-like arcs), class 2 a thin curved sheet
(2 voxels) — placed, sized and contrasted differently per case. It is not anatomy; it has the
size, the class thinness and the per-case variation that decide the cost and the planning.

``--kind ct`` makes the other kind the held-back check names, an anisotropic CT
(`standin_ct.make_ct_dataset`: abdominal CT in HU, 0.7-0.9 mm in plane, 4 or 5 mm slices, an
organ and lesions in it; ``--shape`` is then ``IN_PLANE,IN_PLANE,LENGTH_MM``, default
512,512,240).

Then it runs the CLI exactly as a user would (``segloop emulate --dataset D --compare
random,entropy,full --out OUT``, nothing else unless ``--extra`` is given) as a child process and
reports: the plan and the estimate the run printed, the wall time against the 90-minute budget,
the child's peak RSS, and the test Dice per arm and round (did every round's fine-tune learn?).

Usage::

    .venv/bin/python benchmarks/bench_emulate_large.py --work /tmp/large \
        --out benchmarks/results/emulate-large.json
    .venv/bin/python benchmarks/bench_emulate_large.py --work /tmp/large --make-only
    .venv/bin/python benchmarks/bench_emulate_large.py --kind ct --work /tmp/ct \
        --out benchmarks/results/emulate-large-ct.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import write_json  # noqa: E402
from standin_ct import make_ct_dataset, smooth_noise, write_msd  # noqa: E402

BUDGET_MINUTES = 90.0


def make_case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One made-up head MR: image ``(X, Y, Z)`` int16 and label ``(X, Y, Z)`` uint8 (0 background,
    1 tubes, 2 sheet)."""
    X, Y, Z = shape
    g = np.ogrid[0:X, 0:Y, 0:Z]
    c = np.array(shape, np.float32) / 2 + rng.uniform(-6, 6, 3)
    radii = np.array(shape, np.float32) * rng.uniform(0.36, 0.42, 3)
    r = np.sqrt(sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, radii, strict=True)))
    brain = r < 1.0
    skull = (r >= 1.04) & (r < 1.12)
    texture = smooth_noise(shape, 3.0, rng)
    white = brain & (texture > 0.2)
    img = np.zeros(shape, np.float32)
    img[brain] = 600.0
    img[white] = 800.0
    img[skull] = 1100.0
    img[(r >= 1.0) & (r < 1.04)] = 150.0  # CSF rim
    label = np.zeros(shape, np.uint8)
    # class 1: two curved tubes, mirrored left/right of the mid-plane
    t = np.linspace(0.0, 1.0, 200)
    tube_r = rng.uniform(2.0, 3.0)
    length = radii[1] * rng.uniform(0.5, 0.7)
    bend = rng.uniform(6, 14)
    for side in (-1, 1):
        x0 = c[0] + side * radii[0] * rng.uniform(0.35, 0.5)
        z0 = c[2] - radii[2] * rng.uniform(0.1, 0.3)
        pts = np.stack([x0 + side * bend * np.sin(np.pi * t), c[1] - length / 2 + length * t, z0 + 0.5 * bend * np.cos(np.pi * t)], 1)
        seeds = np.zeros(shape, bool)
        idx = np.round(pts).astype(int)
        idx = idx[(idx >= 0).all(1) & (idx < np.array(shape)).all(1)]
        seeds[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        tube = ndimage.distance_transform_edt(~seeds) <= tube_r
        label[tube & brain] = 1
    # class 2: a thin curved sheet (a bent plane, 2 voxels thick) inside the brain
    a, b = rng.uniform(-0.004, 0.004, 2)
    zc = c[2] + radii[2] * rng.uniform(0.15, 0.35)
    surface = zc + a * (g[0] - c[0]) ** 2 + b * (g[1] - c[1]) ** 2
    sheet = (np.abs(g[2] - surface) <= 1.0) & (r < 0.6)
    label[sheet & (label == 0)] = 2
    contrast = rng.uniform(0.8, 1.2)
    img[label == 1] = 700.0 + 250.0 * contrast
    img[label == 2] = 450.0 - 120.0 * contrast
    bias = 1.0 + 0.15 * smooth_noise(shape, 40.0, rng)
    img *= bias
    sd = rng.uniform(20, 40)
    img = np.sqrt((img + sd * rng.standard_normal(shape).astype(np.float32)) ** 2 + (sd * rng.standard_normal(shape).astype(np.float32)) ** 2)
    return np.clip(img, 0, 32767).astype(np.int16), label


def make_dataset(root: Path, cases: int, shape: tuple[int, int, int], seed: int) -> Path:
    """Write an MSD-layout dataset (imagesTr/labelsTr/dataset.json) of ``cases`` made-up volumes;
    an existing complete one is kept."""
    rng = np.random.default_rng(seed)

    def made() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for i in range(cases):
            img, lab = make_case(shape, rng)
            yield f"head_{i:03d}", img, lab, np.eye(4)

    return write_msd(root, made(), {
        "name": "LargeHeadStandIn",
        "description": "made-up 256x256x160 head MR stand-in (benchmarks/bench_emulate_large.py)",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "tubes", "2": "sheet"},
    })


def _rounds(out: Path) -> list[dict[str, str]]:
    path = out / "rounds.csv"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, line.split(","), strict=False)) for line in lines[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the dataset and the run")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--kind", choices=("mr", "ct"), default="mr", help="head MR (default) or anisotropic abdominal CT")
    p.add_argument("--shape", default=None, help="X,Y,Z voxels (mr, default 256,256,160); for ct IN_PLANE,IN_PLANE,"
                   "LENGTH_MM (default 512,512,240)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--make-only", action="store_true", help="only write the dataset")
    p.add_argument("--extra", default="", help="more emulate arguments (default: none, the defaults)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/emulate-large.json"))
    a = p.parse_args()
    shape = tuple(int(s) for s in (a.shape or ("256,256,160" if a.kind == "mr" else "512,512,240")).split(","))
    if len(shape) != 3:
        p.error("--shape takes three numbers")
    t0 = time.perf_counter()
    if a.kind == "ct":
        data = make_ct_dataset(a.work / "data", a.cases, shape[0], float(shape[2]), a.seed)
    else:
        data = make_dataset(a.work / "data", a.cases, shape, a.seed)
    print(f"dataset ready in {time.perf_counter() - t0:.0f} s: {data}", flush=True)
    if a.make_only:
        return
    run = a.work / "run"
    cmd = [str(Path(sys.executable).parent / "segloop"), "emulate", "--dataset", str(data), "--compare", "random,entropy,full", "--out", str(run)]
    cmd += a.extra.split()
    print(" ".join(cmd), flush=True)
    log = a.work / "run.log"
    t1 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t1
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").exists() else {}
    rows = _rounds(run)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_at_end": os.getloadavg()},
        "command": " ".join(cmd),
        "kind": a.kind,
        "cases": a.cases,
        "shape": shape,
        "returncode": rc,
        "wall_minutes": round(wall / 60, 1),
        "budget_minutes": BUDGET_MINUTES,
        "within_budget": rc == 0 and wall / 60 <= BUDGET_MINUTES,
        "peak_rss_gb": round(peak_kb / 1e6, 2),
        "estimate": report.get("estimate"),
        "rounds": rows,
        "log_tail": log.read_text().splitlines()[-60:],
    }
    write_json(result, a.out, indent=1, announce="")  # said in the last line
    print(f"\n{'arm':<10} {'round':>5} {'labelled':>8} {'test dice':>9}")
    for r in rows:
        print(f"{r.get('arm', ''):<10} {r.get('round', ''):>5} {r.get('labelled', ''):>8} {r.get('test_mean_dice', ''):>9}")
    print(f"\nrc {rc}; wall {wall / 60:.1f} min (budget {BUDGET_MINUTES:.0f}); peak RSS {peak_kb / 1e6:.2f} GB; wrote {a.out}")


if __name__ == "__main__":
    main()
