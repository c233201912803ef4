"""Dice per prompt type of one emulation arm's final model on the run's test split.

Usage: .venv/bin/python docs/emulation/2026-12-05-prompts/measure_prompts.py RUN ARM N [PROTOCOL,...]
(RUN: an emulation folder, ARM: e.g. random, N: the first N test images of the run's split.)
"""

import json
import sys
import time

import numpy as np
import torch

from segloop.imaging.nifti import read_nifti
from segloop.ml.predictor import Predictor
from segloop.ml.prompt_eval import PROTOCOLS, evaluate_prompts
from segloop.store.local import open_datastore

torch.set_num_threads(1)
run, arm, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
protocols = sys.argv[4].split(",") if len(sys.argv) > 4 else list(PROTOCOLS)
config = json.load(open(f"{run}/config.json"))
splits = json.load(open(f"{run}/splits.json"))
version = int(json.load(open(f"{run}/arms/{arm}/rounds.json"))[-1]["model_version"])
data = config["dataset"]
pairs = [(read_nifti(f"{data}/imagesTr/{t}.nii.gz"),
          np.asarray(read_nifti(f"{data}/labelsTr/{t}.nii.gz").array).astype(np.int64)) for t in splits["test"][:n]]
store = open_datastore(f"{run}/arms/{arm}/data")
predictor = Predictor.load(store, "emulated", version)
t0 = time.time()
result = evaluate_prompts(predictor, pairs, protocols=protocols)
for name, row in result["protocols"].items():
    per_class = {k: round(v, 3) for k, v in row.items() if k not in ("mean", "seconds")}
    print(f"{name:<18} {row['mean']:.3f}  {row['seconds']:.2f}s", per_class)
print(f"{time.time() - t0:.0f}")
