"""A made-up anisotropic abdominal CT dataset: the held-back check's other kind of data (issue 13,
part 4), which we do not have either.

Each case is an axial CT of the abdomen in Hounsfield units on a grid of ``X x Y x Z`` voxels of
about 0.7-0.9 mm in plane and 4 or 5 mm between slices (the anisotropy of a routine abdominal
CT): air around an elliptic body with a fat rim, muscle wall, soft tissue with texture, a
vertebral body of bone behind, and two classes -- class 1 an organ (a deformed ellipsoid of
45-75 mm half-axes on one side of the body, 40-70 HU, spleen- or liver-like) and class 2 one or
two lesions inside it (spheres of 6-14 mm radius, 25-60 HU darker than the organ). Geometry is
made in millimetres, so a case of 4 mm slices has more slices over the same anatomy. Gaussian
noise of 8-18 HU. It is not anatomy; it has the size, the anisotropy, the intensity scale (HU,
air at -1000) and the per-case variation of spacing that decide the planning and the cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-sd noise smoothed with a Gaussian of ``sigma`` voxels (made on a coarser grid)."""
    coarse = [max(4, s // 4) for s in shape]
    n = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / 4)
    n = ndimage.zoom(n, [s / c for s, c in zip(shape, coarse, strict=True)], order=1)
    n -= n.mean()
    return n / max(float(n.std()), 1e-6)


def make_ct_case(inplane: int, slices_mm: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One made-up abdominal CT: image ``(X, Y, Z)`` int16 (HU), label uint8 (0 background, 1 organ,
    2 lesion) and the spacing in mm. ``inplane``: voxels per in-plane axis; ``slices_mm``: the
    scanned length along Z."""
    sxy = float(rng.uniform(0.7, 0.9))
    sz = float(rng.choice([4.0, 5.0], p=[0.3, 0.7]))
    shape = (inplane, inplane, max(8, int(round(slices_mm / sz))))
    sp = np.array([sxy, sxy, sz], np.float32)
    g = [(np.arange(n, dtype=np.float32) - n / 2) * s for n, s in zip(shape, sp, strict=True)]  # mm from the centre
    x, y, z = g[0][:, None, None], g[1][None, :, None], g[2][None, None, :]
    fov = inplane * sxy
    ax, ay = fov * rng.uniform(0.36, 0.42), fov * rng.uniform(0.26, 0.31)
    cy = float(rng.uniform(-10, 10))
    r_body = np.sqrt((x / ax) ** 2 + ((y - cy) / ay) ** 2) + 0.0 * z  # (X, Y, Z)
    tex = smooth_noise(shape, 2.0, rng)
    img = np.full(shape, -1000.0, np.float32)
    img[r_body < 1.0] = -100.0  # fat
    img[r_body < 0.93] = 50.0  # muscle wall
    inner = r_body < 0.86
    img[inner] = 30.0 + 12.0 * tex[inner]  # soft tissue
    spine = np.sqrt(x**2 + (y - cy - 0.62 * ay) ** 2) + 0.0 * z < fov * 0.045
    img[spine] = 500.0 + 200.0 * tex[spine]
    # class 1: a deformed ellipsoid on one side
    side = float(rng.choice([-1.0, 1.0]))
    c = np.array([side * ax * rng.uniform(0.35, 0.5), cy + ay * rng.uniform(-0.2, 0.25), rng.uniform(-20, 20)])
    semi = rng.uniform(45, 75, 3)
    semi[2] = rng.uniform(40, 70)
    warp = 0.12 * smooth_noise(shape, 6.0, rng)
    r_org = np.sqrt(((x - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((z - c[2]) / semi[2]) ** 2) + warp
    organ = (r_org < 1.0) & inner
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    hu = float(rng.uniform(40, 70))
    img[organ] = hu + 8.0 * tex[organ]
    # class 2: one or two lesions inside the organ
    for _ in range(int(rng.integers(1, 3))):
        inside = np.argwhere(r_org[::4, ::4, :] < 0.55)
        if not len(inside):
            break
        p = inside[rng.integers(len(inside))] * np.array([4, 4, 1])
        centre = np.array([g[a][p[a]] for a in range(3)])
        rad = float(rng.uniform(6, 14))
        lesion = (np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) < rad) & organ
        label[lesion] = 2
        img[lesion] = hu - float(rng.uniform(25, 60)) + 5.0 * tex[lesion]
    img += float(rng.uniform(8, 18)) * rng.standard_normal(shape).astype(np.float32)
    return np.clip(img, -1024, 3071).astype(np.int16), label, (sxy, sxy, sz)


def write_msd(root: Path, cases: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]], meta: dict[str, object]) -> Path:
    """Write ``(name, image, label, affine)`` cases in the MSD layout (imagesTr/labelsTr/dataset.json
    with ``meta`` and the training list); an existing complete dataset is kept (``cases`` unused)."""
    if (root / "dataset.json").exists():
        return root
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for name, img, lab, affine in cases:
        file = f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / file)
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / file)
        training.append({"image": f"./imagesTr/{file}", "label": f"./labelsTr/{file}"})
        print(f"made {file} {img.shape} spacing {'x'.join(f'{abs(affine[a, a]):g}' for a in range(3))}", flush=True)
    meta = {**meta, "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def make_ct_dataset(root: Path, cases: int, inplane: int, slices_mm: float, seed: int) -> Path:
    """Write an MSD-layout dataset (modality CT) of ``cases`` made-up volumes; an existing complete
    one is kept."""
    rng = np.random.default_rng(seed)

    def made() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for i in range(cases):
            img, lab, sp = make_ct_case(inplane, slices_mm, rng)
            yield f"abdomen_{i:03d}", img, lab, np.diag([sp[0], sp[1], sp[2], 1.0])

    return write_msd(root, made(), {
        "name": "AnisotropicCTStandIn",
        "description": "made-up anisotropic abdominal CT stand-in (benchmarks/standin_ct.py)",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
    })
