"""A dataset's fingerprint: what its labelled images look like, the input of the plan
(`segloop.ml.plan`), as nnU-Net's fingerprint extraction is the input of its planner.

Per dataset: image shapes (voxels) and spacings (mm), modality, channels, the foreground's
intensity percentiles, mean and sd (CT normalisation); per class value: the median voxel count,
the median bounding box (mm per axis) and the thickness (mm: the diameter of the largest ball
inside the structure; the lower quartile over the cases) -- what the plan needs to tell a large
organ from a thin sheet -- and whether the structure is one piece in every label (the smallest
share of its voxels in its largest connected component; also for the foreground as a whole),
which decides the post-processing (`segloop.ml.postprocess`).
Plain functions and a frozen dataclass; arrays are ``(X, Y, Z[, C])``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segloop.ml.postprocess import decide_from_shares, label_shares
from segloop.ml.preprocess import HIGH_PERCENTILE, LOW_PERCENTILE

SAMPLE_VOXELS = 20_000  # foreground voxels sampled per image for the intensity statistics
THICKNESS_CASES = 20  # cases per class whose thickness is measured (a distance transform of its box each)
THICKNESS_PERCENTILE = 25  # of the cases' thicknesses: most cases' structures are at least this thick


@dataclass(frozen=True)
class Fingerprint:
    """What the labelled images look like. Shapes ``(X, Y, Z)`` in voxels, spacings in mm."""

    cases: int
    modality: str
    channels: int
    shapes: tuple[tuple[int, int, int], ...]
    spacings: tuple[tuple[float, float, float], ...]
    foreground_percentiles: tuple[float, float] | None  # 0.5 and 99.5 of foreground intensities
    foreground_mean: float | None
    foreground_sd: float | None
    class_voxels: dict[int, float] = field(default_factory=dict)  # median voxels per case, by class value
    # median bounding-box length per axis (mm) per case, by class value
    class_extent_mm: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    # thickness (mm): the diameter of the largest ball inside the class, lower quartile over the cases
    class_thickness_mm: dict[int, float] = field(default_factory=dict)
    # the smallest share of a structure's voxels in its largest connected component over the cases,
    # by class value, 0: the foreground as a whole (`segloop.ml.postprocess`)
    largest_share: dict[int, float] = field(default_factory=dict)

    @property
    def keep_largest(self) -> tuple[int, ...]:
        """The structures that are one piece in every label (the rule training derives the same way)."""
        return decide_from_shares([self.largest_share])

    @property
    def median_shape(self) -> tuple[int, int, int]:
        m = np.median(np.array(self.shapes), axis=0)
        return (int(m[0]), int(m[1]), int(m[2]))

    @property
    def median_spacing(self) -> tuple[float, float, float]:
        return _median3(self.spacings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_shape"] = list(self.median_shape)
        d["median_spacing"] = list(self.median_spacing)
        d.pop("shapes")
        d.pop("spacings")
        d["class_voxels"] = {str(k): v for k, v in self.class_voxels.items()}
        d["class_extent_mm"] = {str(k): list(v) for k, v in self.class_extent_mm.items()}
        d["class_thickness_mm"] = {str(k): v for k, v in self.class_thickness_mm.items()}
        d["largest_share"] = {str(k): v for k, v in self.largest_share.items()}
        d["keep_largest"] = list(self.keep_largest)
        return d


def structure_size(mask: np.ndarray, spacing: Sequence[float], thickness: bool = True) -> tuple[tuple[float, float, float], float | None]:
    """Bounding-box length per axis (mm) of a non-empty boolean ``mask`` (X, Y, Z) and, with
    ``thickness``, its thickness: twice the largest distance (mm) from a voxel of the mask to the
    nearest voxel outside it -- the diameter of the largest ball inside (2 mm for a sheet two 1 mm
    voxels thick, 2r for a sphere of radius r). The distance transform runs on the bounding box only."""
    lo, hi = [], []
    for ax in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    sp = [float(x) for x in spacing]
    extent = ((hi[0] - lo[0]) * sp[0], (hi[1] - lo[1]) * sp[1], (hi[2] - lo[2]) * sp[2])
    if not thickness:
        return extent, None
    box = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1)
    return extent, 2.0 * float(ndi.distance_transform_edt(box, sampling=sp).max())


def fingerprint_arrays(
    items: Iterable[tuple[np.ndarray, Sequence[float], np.ndarray | None]],
    modality: str = "",
    seed: int = 0,
) -> Fingerprint:
    """Fingerprint of ``(image (X, Y, Z[, C]), spacing, label (X, Y, Z) or None)`` items.

    Raises:
        ValueError: no item, or images with different channel counts.
    """
    rng = np.random.default_rng(seed)
    shapes: list[tuple[int, int, int]] = []
    spacings: list[tuple[float, float, float]] = []
    samples: list[np.ndarray] = []
    voxels: dict[int, list[int]] = {}
    extents: dict[int, list[tuple[float, float, float]]] = {}
    thick: dict[int, list[float]] = {}
    shares: dict[int, list[float]] = {}
    channels: set[int] = set()
    for image, spacing, label in items:
        arr = np.asarray(image)
        channels.add(1 if arr.ndim == 3 else int(arr.shape[3]))
        shapes.append((int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2])))
        spacings.append((float(spacing[0]), float(spacing[1]), float(spacing[2])))
        first = arr if arr.ndim == 3 else arr[..., 0]
        if label is not None:
            lab = np.asarray(label)
            fg = first[lab > 0]
            values, counts = np.unique(lab, return_counts=True)
            ints = lab if lab.dtype.kind in "iu" else lab.astype(np.int64)
            boxes = ndi.find_objects(ints)  # each class's bounding box in one pass over the label
            for v, share in label_shares(ints, [int(x) for x in values if x != 0]).items():
                shares.setdefault(v, []).append(share)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                if v != 0:
                    voxels.setdefault(int(v), []).append(int(c))
                    inside = lab[boxes[int(v) - 1]] == v  # the class on its box: the same extent and thickness
                    ext, th = structure_size(inside, spacing, thickness=len(thick.get(int(v), [])) < THICKNESS_CASES)
                    extents.setdefault(int(v), []).append(ext)
                    if th is not None:
                        thick.setdefault(int(v), []).append(th)
        else:
            fg = first.ravel()
        if fg.size:
            take = fg if fg.size <= SAMPLE_VOXELS else fg[rng.choice(fg.size, SAMPLE_VOXELS, replace=False)]
            samples.append(np.asarray(take, dtype=np.float64))
    if not shapes:
        raise ValueError("cannot fingerprint an empty dataset")
    if len(channels) != 1:
        raise ValueError(f"the images have different channel counts: {sorted(channels)}")
    pct: tuple[float, float] | None = None
    mean = sd = None
    if samples:
        allfg = np.concatenate(samples)
        lo, hi = np.percentile(allfg, [LOW_PERCENTILE, HIGH_PERCENTILE])
        pct = (float(lo), float(hi))
        clipped = np.clip(allfg, lo, hi)
        mean, sd = float(clipped.mean()), float(clipped.std())
    return Fingerprint(
        cases=len(shapes), modality=modality.upper(), channels=channels.pop(), shapes=tuple(shapes),
        spacings=tuple(spacings), foreground_percentiles=pct, foreground_mean=mean, foreground_sd=sd,
        class_voxels={v: float(np.median(c)) for v, c in sorted(voxels.items())},
        class_extent_mm={v: _median3(e) for v, e in sorted(extents.items())},
        class_thickness_mm={v: float(np.percentile(t, THICKNESS_PERCENTILE)) for v, t in sorted(thick.items())},
        largest_share={v: float(min(x)) for v, x in sorted(shares.items())},
    )


def _median3(rows: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    m = np.median(np.array(rows, dtype=float), axis=0)
    return (float(m[0]), float(m[1]), float(m[2]))


def fingerprint_msd(root: str | Path, names: Sequence[str] | None = None, max_cases: int | None = 50) -> Fingerprint:
    """Fingerprint of a dataset folder in the MSD or nnU-Net raw layout (`segloop.store.msd`); at
    most ``max_cases`` cases (evenly spread over the sorted list), or just ``names`` (case names)."""
    from segloop.imaging.nifti import read_nifti, read_nifti_channels
    from segloop.store.msd import open_msd

    ds = open_msd(Path(root), require_labels=False)
    cases = sorted(ds.cases, key=lambda c: c.name)
    if names is not None:
        wanted = set(names)
        cases = [c for c in cases if c.name in wanted]
    if max_cases is not None and len(cases) > max_cases:
        idx = np.linspace(0, len(cases) - 1, max_cases).round().astype(int)
        cases = [cases[i] for i in sorted(set(idx.tolist()))]

    def items() -> Iterable[tuple[np.ndarray, Sequence[float], np.ndarray | None]]:
        for case in cases:
            v = read_nifti_channels(case.images)
            yield np.asarray(v.array), v.spacing, (np.asarray(read_nifti(case.label).array) if case.label is not None else None)

    return fingerprint_arrays(items(), modality=str(ds.modality or ""))
