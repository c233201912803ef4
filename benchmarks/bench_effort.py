"""Annotation effort of the brushing virtual user, with and without the boundary tolerance
(issue 13, part 5).

A trained model in a data folder (e.g. the one ``bash scripts/demo.sh`` trains) segments MSD
images it did not train on; the virtual user (`segloop.loop.annotator.VirtualAnnotator`) corrects
each with up to ``--clicks`` clicks per class, then the strokes to turn the clicked result into
the reference are counted at each ``--tolerances`` (voxels of in-plane boundary disagreement left
as it is: `residual_strokes`). The table gives strokes and minutes per volume
(`segloop.loop.effort.EffortModel`) next to drawing every class by hand.

Usage::

    .venv/bin/python benchmarks/bench_effort.py --data data/demo --model hippocampus \
        --dataset ../shared/data/Task04_Hippocampus --images 30 --out benchmarks/results/effort.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from segloop.imaging.nifti import read_nifti
from segloop.loop.annotator import AnnotationTask, VirtualAnnotator, residual_strokes
from segloop.loop.effort import EffortModel, manual_strokes, reviewed_slices
from segloop.ml.predictor import Predictor
from segloop.store.local import open_datastore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import base_result, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="data folder holding the trained model")
    ap.add_argument("--model", default="hippocampus")
    ap.add_argument("--dataset", type=Path, required=True, help="MSD folder (imagesTr, labelsTr, dataset.json)")
    ap.add_argument("--images", type=int, default=30, help="images the model did not train on, in name order")
    ap.add_argument("--clicks", type=int, default=3, help="clicks per class before brushing")
    ap.add_argument("--tolerances", default="0,1,2", help="stroke tolerances to compare (voxels)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    result = base_result()
    store = open_datastore(args.data)
    predictor = Predictor.load(store, args.model, None)
    version = store.get_model(args.model).current_version
    labelled = {r.name for r in store.list_images() if r.latest_revision}  # what a model here trains on
    spec = json.loads((args.dataset / "dataset.json").read_text())
    pairs = sorted((Path(t["image"]).name.replace(".nii.gz", ""), t) for t in spec["training"])
    chosen = [(n, t) for n, t in pairs if n not in labelled][: args.images]
    if not chosen:
        raise SystemExit("every image of the dataset is labelled in the data folder: nothing to measure on")
    classes = [int(v) for v in predictor.class_values if int(v) != 0]
    tolerances = [int(t) for t in args.tolerances.split(",")]
    model = EffortModel()
    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    for name, item in chosen:
        image = read_nifti(args.dataset / item["image"])
        reference = read_nifti(args.dataset / item["label"]).array.astype(np.uint8)
        user = VirtualAnnotator({name: reference}, args.clicks, 0.95, seed=0, finish="clicks")
        done = user.annotate(AnnotationTask(image_id=name, image=image, predictor=predictor, base_revision=None))
        rows.append({
            "image": name, "clicks": done.clicks, "clicked_dice": float(np.mean(list(done.clicked_dice.values()))),
            "strokes": {t: residual_strokes(done.label, reference, classes, t) for t in tolerances},
            "manual_strokes": manual_strokes(reference, classes),
            "reviewed_slices": reviewed_slices(reference, reference),
        })
    mean = {k: float(np.mean([float(r[k]) for r in rows]))  # type: ignore[arg-type]
            for k in ("clicks", "clicked_dice", "manual_strokes", "reviewed_slices")}
    strokes = {t: float(np.mean([r["strokes"][t] for r in rows])) for t in tolerances}  # type: ignore[index]
    minutes = {t: model.minutes(clicks=mean["clicks"], strokes=s, reviewed_slices=mean["reviewed_slices"])
               for t, s in strokes.items()}
    manual = model.minutes(strokes=mean["manual_strokes"], reviewed_slices=mean["reviewed_slices"])
    result.update({
        "model": args.model, "version": version, "dataset": str(args.dataset), "images": len(rows),
        "clicks_per_class": args.clicks, "effort_model": model.describe(), "seconds": time.perf_counter() - t0,
        "mean": mean, "strokes_per_volume": strokes, "minutes_per_volume": minutes,
        "manual_minutes_per_volume": manual, "per_image": rows,
    })
    print(f"\nbrushing after {args.clicks} clicks per class on {len(rows)} images the model did not train on "
          f"(clicked Dice {mean['clicked_dice']:.3f}, {mean['clicks']:.1f} clicks, "
          f"{mean['reviewed_slices']:.1f} reviewed slices per volume)")
    print(f"{'stroke tolerance':>18s} {'strokes/volume':>15s} {'minutes/volume':>15s}")
    for t in tolerances:
        print(f"{t:>16d} vx {strokes[t]:15.1f} {minutes[t]:15.2f}")
    print(f"{'drawn by hand':>18s} {mean['manual_strokes']:15.1f} {manual:15.2f}")
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
