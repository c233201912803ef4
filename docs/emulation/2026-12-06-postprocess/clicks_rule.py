"""Click and prompt protocols of an emulation arm's final model under a given ``keep_largest`` rule.

Usage: .venv/bin/python docs/emulation/2026-12-06-postprocess/clicks_rule.py RUN ARM N RULE PROTOCOL,...
(RULE: class values, 0 = the foreground, "" = none; it replaces the model's own. NOSTEP=1 in the
environment turns off the per-step check of interactive sessions, leaving the start's post-processing.)
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segloop.imaging.nifti import read_nifti
from segloop.ml.predictor import Predictor
from segloop.ml.prompt_eval import evaluate_prompts
from segloop.ml.session import InteractiveSession
from segloop.store.local import open_datastore

torch.set_num_threads(1)
if os.environ.get("NOSTEP"):
    InteractiveSession._drop_new_strays = lambda *a, **k: None  # type: ignore[method-assign]
run, arm, n, rule, protocols = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
config = json.loads(Path(f"{run}/config.json").read_text())
splits = json.loads(Path(f"{run}/splits.json").read_text())
version = int(json.loads(Path(f"{run}/arms/{arm}/rounds.json").read_text())[-1]["model_version"])
data = config["dataset"]
pairs = [(read_nifti(f"{data}/imagesTr/{t}.nii.gz"),
          np.asarray(read_nifti(f"{data}/labelsTr/{t}.nii.gz").array).astype(np.int64)) for t in splits["test"][:n]]
predictor = Predictor.load(open_datastore(f"{run}/arms/{arm}/data"), "emulated", version)
predictor.spec = dataclasses.replace(predictor.spec, keep_largest=tuple(int(v) for v in rule.split(",") if v != ""))
t0 = time.time()
result = evaluate_prompts(predictor, pairs, protocols=protocols)
for name, row in result["protocols"].items():
    per_class = {k: round(v, 3) for k, v in row.items() if k not in ("mean", "seconds")}
    print(f"rule [{rule}] {name:<10} {row['mean']:.4f}  {row['seconds']:.2f}s", per_class, flush=True)
print(f"{time.time() - t0:.0f} s")
