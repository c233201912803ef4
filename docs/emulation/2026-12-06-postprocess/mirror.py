"""Test Dice of one model version with and without test-time mirroring (both post-processed).

Usage: .venv/bin/python docs/emulation/2026-12-06-postprocess/mirror.py RUN ARM N VERSION AXES
(the first N test images of the run's split; AXES: e.g. 0. The rule is the version's own, or
foreground + class 1 for models trained before it.)
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
run, arm, n, v = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
axes = [int(a) for a in sys.argv[5].split(",")]
config = json.loads(Path(f"{run}/config.json").read_text())
splits = json.loads(Path(f"{run}/splits.json").read_text())
data = config["dataset"]
pred = Predictor.load(open_datastore(f"{run}/arms/{arm}/data"), "emulated", v)
print("train flip axes", pred.spec.extra.get("train", {}).get("flip_axes"))
classes = [c for c in pred.class_values if c != 0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


plain_d, mirrored_d = [], []
for t in splits["test"][:n]:
    img = read_nifti(f"{data}/imagesTr/{t}.nii.gz")
    ref = np.asarray(read_nifti(f"{data}/labelsTr/{t}.nii.gz").array).astype(int)
    prep = pred.prepare(img)
    p0 = pred._probabilities(prep.data, None)
    acc = p0.copy()
    for ax in axes:
        acc += np.flip(pred._probabilities(np.ascontiguousarray(np.flip(prep.data, axis=ax + 1)), None), axis=ax + 1)
    acc /= 1 + len(axes)
    for probs, out in ((p0, plain_d), (acc, mirrored_d)):
        lab = keep_largest(pred.labels_from(pred.to_image_grid(probs, prep)), pred.spec.keep_largest or (0, 1))[0]
        out.append([dice(lab == c, ref == c) for c in classes])
a, b = np.array(plain_d), np.array(mirrored_d)
diff = b.mean(1) - a.mean(1)
print(f"raw {a.mean():.4f} mirrored {b.mean():.4f} diff {diff.mean():+.4f} better {(diff > 0).sum()} worse {(diff < 0).sum()} of {len(diff)}")
