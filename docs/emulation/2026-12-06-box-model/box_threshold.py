"""After a box (click-only model): where are the errors, and would a box-fitted threshold help?"""
import json, sys
import numpy as np, torch
from segloop.imaging.nifti import read_nifti
from segloop.ml.predictor import Predictor
from segloop.ml import prompt_session
from segloop.ml.virtual_prompts import reference_box
from segloop.metrics import dice
from segloop.store.local import open_datastore
torch.set_num_threads(1)
run, arm, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = json.load(open(f"{run}/config.json")); splits = json.load(open(f"{run}/splits.json"))
version = int(json.load(open(f"{run}/arms/{arm}/rounds.json"))[-1]["model_version"])
data = config["dataset"]
predictor = Predictor.load(open_datastore(f"{run}/arms/{arm}/data"), "emulated", version)
vals = list(predictor.spec.class_values)
rows = []
for t in splits["test"][:n]:
    img = read_nifti(f"{data}/imagesTr/{t}.nii.gz"); ref = np.asarray(read_nifti(f"{data}/labelsTr/{t}.nii.gz").array).astype(np.int64)
    s = predictor.session(img)
    for v in [x for x in vals if x]:
        b = reference_box(ref, v)
        prompt_session.add_box(s, b)
    lab = np.asarray(s.prediction.label.array); probs = s._probs
    for v in [x for x in vals if x]:
        b = reference_box(ref, v); sl = b.slices
        m = lab[sl] == v; r = ref[sl] == v
        fp = int((m & ~r).sum()); fn = int((~m & r).sum())
        # touches per face: does the mask come within 1 voxel of each face
        faces = []
        for ax in range(3):
            hit = np.flatnonzero(np.any(m, axis=tuple(a for a in range(3) if a != ax)))
            L = m.shape[ax]
            faces += [hit[0] if len(hit) else L, (L - 1 - hit[-1]) if len(hit) else L]
        # oracle threshold within the box on p_v (relative to others): label v where p_v >= t
        p = probs[vals.index(v)][sl]
        base = dice(lab, ref, v)
        best = (base, None)
        for tt in [0.2, 0.3, 0.4, 0.5, 0.6]:
            l2 = lab.copy(); sub = l2[sl]
            sub[(p >= tt)] = v; sub[(p < tt) & (sub == v)] = 0
            d = dice(l2, ref, v)
            if d > best[0]: best = (d, tt)
        rows.append((t, v, base, fp, fn, faces, best))
        print(t, v, f"dice {base:.3f} fp {fp} fn {fn} face gaps {faces} oracle {best[0]:.3f}@{best[1]}", flush=True)
b = np.array([r[2] for r in rows]); o = np.array([r[6][0] for r in rows])
print("mean box dice", b.mean().round(4), "oracle thr", o.mean().round(4), "fp", np.mean([r[3] for r in rows]), "fn", np.mean([r[4] for r in rows]))
