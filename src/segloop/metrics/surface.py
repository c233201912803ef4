"""Surface distance: the 95th-percentile symmetric Hausdorff distance in millimetres."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Border voxels of ``mask``: voxels of the mask with a 6-neighbour outside it (or at the array edge)."""
    eroded = ndimage.binary_erosion(mask, structure=_FACE_CONNECTIVITY, border_value=0)
    return mask & ~eroded


def hausdorff95(
    pred: np.ndarray,
    ref: np.ndarray,
    value: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> float:
    """95% Hausdorff distance (mm) between the surfaces of class ``value`` in ``pred`` and ``ref``.

    The surface of a mask is its set of border voxels (6-connectivity). For every surface voxel
    of one mask, the Euclidean distance (voxel centres, scaled by ``spacing``) to the nearest
    surface voxel of the other is taken; the result is the larger of the two directed 95th
    percentiles (the definition of MONAI's ``compute_hausdorff_distance(percentile=95)``).

    Args:
        pred, ref: integer label maps, shape ``(X, Y, Z)``.
        value: class value.
        spacing: voxel size in mm along each axis.

    Returns:
        Distance in mm. Empty cases: 0.0 when the class is absent from both maps;
        ``math.inf`` when it is absent from exactly one of them.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected 3-D label maps (X, Y, Z), got shape {pred.shape}")
    p = pred == value
    r = ref == value
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return math.inf
    # Work on the joint bounding box (plus a margin) to keep large volumes cheap.
    idx = np.argwhere(p | r)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = np.minimum(idx.max(axis=0) + 2, p.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sp = _surface(p[box])
    sr = _surface(r[box])
    sampling = tuple(float(s) for s in spacing)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=sampling)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    d_pr = np.percentile(dist_to_r[sp], 95)
    d_rp = np.percentile(dist_to_p[sr], 95)
    return float(max(d_pr, d_rp))
