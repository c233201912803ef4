"""Test Dice of an emulation arm's model versions: the raw arg-max against the ``keep_largest`` rule.

Usage: .venv/bin/python docs/emulation/2026-12-06-postprocess/measure_rule.py RUN ARM N V1,V2,... [RULE]
(the first N test images of the run's split; RULE: class values, 0 = the foreground; without it,
each version's own rule.)
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from segloop.imaging.nifti import read_nifti
from segloop.ml.postprocess import keep_largest
from segloop.ml.predictor import Predictor
from segloop.store.local import open_datastore

torch.set_num_threads(1)
run, arm, n, versions = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(v) for v in sys.argv[4].split(",")]
given = tuple(int(v) for v in sys.argv[5].split(",")) if len(sys.argv) > 5 else None
config = json.loads(Path(f"{run}/config.json").read_text())
splits = json.loads(Path(f"{run}/splits.json").read_text())
data = config["dataset"]
store = open_datastore(f"{run}/arms/{arm}/data")
cases = [(read_nifti(f"{data}/imagesTr/{t}.nii.gz"), np.asarray(read_nifti(f"{data}/labelsTr/{t}.nii.gz").array).astype(int))
         for t in splits["test"][:n]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


for v in versions:
    pred = Predictor.load(store, "emulated", v)
    rule = given if given is not None else pred.spec.keep_largest
    classes = [c for c in pred.class_values if c != 0]
    raw_d, rule_d = [], []
    for img, ref in cases:
        prep = pred.prepare(img)
        probs = pred.to_image_grid(pred._probabilities(prep.data, None), prep)
        raw = pred.labels_from(probs)
        post, _ = keep_largest(raw, rule)
        raw_d.append([dice(raw == c, ref == c) for c in classes])
        rule_d.append([dice(post == c, ref == c) for c in classes])
    a, b = np.array(raw_d), np.array(rule_d)
    diff = b.mean(1) - a.mean(1)
    print(f"v{v} rule {rule}: raw {a.mean():.4f} {np.round(a.mean(0), 4)} -> {b.mean():.4f} {np.round(b.mean(0), 4)}  "
          f"diff {diff.mean():+.4f} (cases better {int((diff > 1e-9).sum())}, worse {int((diff < -1e-9).sum())} of {len(diff)})",
          flush=True)
