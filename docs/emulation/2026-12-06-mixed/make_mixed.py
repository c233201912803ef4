"""A less homogeneous stand-in built from Task04: three acquisition "protocols" in unequal shares.

The same 260 hippocampus crops and labels; each case is assigned, by a hash of its name, to
  - ``original`` (70 %): as stored;
  - ``inverted`` (20 %): contrast inverted inside the head (``p99.5 - I``, clipped at 0), the way
    a T2-weighted scan shows what T1 shows bright as dark;
  - ``biased``   (10 %): a strong linear bias field along the first axis (x0.3 to x1.7) and
    Gaussian noise of 5 % of the 99.5th percentile, a poor coil on an old scanner.
Labels and geometry are unchanged. A pool drawn from it has a rare sub-population (about 6 of 60
images) that random selection often misses in the first rounds, the case where diversity over
the network's features should pay. It is a stand-in for multi-site data, not a real one.

    python docs/emulation/2026-12-06-mixed/make_mixed.py ../shared/data/Task04_Hippocampus out/Task04_mixed
"""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np


def protocol(name: str) -> str:
    u = (zlib.crc32(name.encode()) % 1000) / 1000.0
    return "original" if u < 0.7 else "inverted" if u < 0.9 else "biased"


def transform(data: np.ndarray, kind: str, seed: int) -> np.ndarray:
    x = data.astype(np.float32)
    top = float(np.percentile(x, 99.5))
    if kind == "inverted":
        return np.clip(top - x, 0.0, None)
    if kind == "biased":
        ramp = np.linspace(0.3, 1.7, x.shape[0], dtype=np.float32)[:, None, None]
        noise = np.random.default_rng(seed).normal(0.0, 0.05 * top, x.shape).astype(np.float32)
        return np.clip(x * ramp + noise, 0.0, None)
    return x


def main(src: Path, dst: Path) -> None:
    meta = json.loads((src / "dataset.json").read_text())
    (dst / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dst / "labelsTr").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    assignment = {}
    for case in meta["training"]:
        name = Path(case["image"]).name
        kind = protocol(name)
        counts[kind] = counts.get(kind, 0) + 1
        assignment[name] = kind
        img = nib.load(str(src / case["image"]))
        out = transform(np.asarray(img.dataobj), kind, zlib.crc32(name.encode()))
        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        nib.save(nib.Nifti1Image(out, img.affine, hdr), str(dst / "imagesTr" / name))
        shutil.copyfile(src / case["label"], dst / "labelsTr" / Path(case["label"]).name)
    meta["name"] = "Hippocampus, three protocols (stand-in)"
    meta["description"] = ("Task04 with 20 % contrast-inverted and 10 % bias-field+noise images "
                           "(docs/emulation/2026-12-06-mixed/make_mixed.py)")
    (dst / "dataset.json").write_text(json.dumps(meta, indent=1))
    (dst / "protocols.json").write_text(json.dumps(assignment, indent=1))
    print(f"wrote {dst}: {counts}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
