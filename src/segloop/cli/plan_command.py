"""``segloop plan``: the dataset's fingerprint and the training plan derived from it (no training).

The same `segloop.ml.plan` step that `segloop train` (and every training job) runs for a new
model, shown before anything is trained: spacing, patch size, normalisation and, with
``--calibrate``, how many optimiser steps a minute buys on this machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segloop.cli.common import CommandError, add_db_arg, open_store, print_json


def _store_fingerprint(data: Path) -> Any:
    import numpy as np

    from segloop.ml.fingerprint import fingerprint_arrays

    store = open_store(data)
    finals = store.final_labels()
    if not finals:
        raise CommandError(f"{data}: no image has a final label to plan from")
    mods = [str(store.get_image(r.image_id).modality or "") for r in finals]

    def items() -> Any:
        for r in finals:
            v = store.load_image(r.image_id)
            yield np.asarray(v.array), v.spacing, np.asarray(store.load_label(r.image_id, r.revision).array)

    return fingerprint_arrays(items(), modality=max(set(mods), key=mods.count))


def cmd_plan(args: argparse.Namespace) -> int:
    from segloop.ml.fingerprint import fingerprint_msd
    from segloop.ml.plan import calibrate, make_plan
    from segloop.ml.postprocess import MIN_SHARE, structure_name

    if (args.dataset is None) == (args.data is None):
        raise CommandError("give one of --dataset DIR (an MSD folder) or --data DIR (a segloop data folder)")
    if args.dataset is not None:
        if not Path(args.dataset).is_dir():
            raise CommandError(f"{args.dataset}: dataset folder does not exist")
        fp = fingerprint_msd(args.dataset, max_cases=args.max_cases)
    else:
        fp = _store_fingerprint(args.data)
    device = args.device or "cpu"
    plan = make_plan(fp, device=device)
    if args.calibrate:
        n_classes = 1 + max(1, len(fp.class_voxels))
        plan = calibrate(plan, fp.channels, n_classes, threads=args.threads)
    if args.json:
        print_json({"fingerprint": fp.to_dict(), "plan": plan.to_dict()})
        return 0
    print(f"fingerprint: {fp.cases} case(s), modality {fp.modality or 'unknown'}, {fp.channels} channel(s), "
          f"median shape {'x'.join(map(str, fp.median_shape))}, median spacing "
          f"{'x'.join(f'{s:g}' for s in fp.median_spacing)} mm")
    if fp.class_voxels:
        print("fingerprint: median voxels per class " + ", ".join(f"{k}: {v:.0f}" for k, v in fp.class_voxels.items()))
    if fp.class_extent_mm:
        print("fingerprint: median box (mm) and thickness (mm) per class " + ", ".join(
            f"{k}: {'x'.join(f'{e:.0f}' for e in ext)}, {fp.class_thickness_mm.get(k, float('nan')):.1f}"
            for k, ext in fp.class_extent_mm.items()))
    if fp.largest_share:
        kept = ", ".join(structure_name(v) for v in fp.keep_largest) or "nothing (every structure comes in pieces in some label)"
        print("fingerprint: share in the largest connected component (smallest over the cases) " + ", ".join(
            f"{structure_name(k)}: {v:.2f}" for k, v in fp.largest_share.items()))
        print(f"post-processing: keep only the largest component of {kept} (one piece, >= {MIN_SHARE:.0%} of "
              "its voxels, in every label; each training decides again from its own labels)")
    print(plan.describe())
    if args.minutes and plan.seconds_per_step:
        print(f"plan: {args.minutes:g} min of training buy about {plan.steps_for_minutes(args.minutes)} steps here")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="show the training plan derived from a dataset (spacing, patch, normalisation, speed)",
        description="Fingerprint a dataset and print the plan `segloop train` would use for a new model.",
    )
    p.add_argument("--dataset", type=Path, metavar="DIR", help="a dataset folder in the MSD or nnU-Net raw layout (imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("--data", type=Path, metavar="DIR", help="a segloop data folder (its final labels)")
    add_db_arg(p)
    p.add_argument("--max-cases", type=int, default=50, help="fingerprint at most this many cases (default 50)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--calibrate", action="store_true", help="time a few optimiser steps on this machine")
    p.add_argument("--threads", type=int, help="torch threads for the calibration")
    p.add_argument("--minutes", type=float, help="with --calibrate: how many steps this many minutes buy")
    p.add_argument("--json", action="store_true", help="print fingerprint and plan as JSON")
    p.set_defaults(func=cmd_plan)
