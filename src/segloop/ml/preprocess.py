"""Pre-processing between an image's own grid and the model's: intensity normalisation and resampling.

- Intensities: per image (and per channel), clip to the robust range [p0.5, p99.5] of its
  voxels, then standardise to zero mean and unit variance over the clipped voxels. Raw MR
  intensities differ by orders of magnitude between scans; this makes them comparable.
- Geometry: when the model has a target spacing (mm) that differs from the image's by more
  than 1%, the image is resampled (trilinear) to that spacing; predictions are resampled back
  to the image's exact shape (trilinear on probabilities, then argmax). Without a target
  spacing, or when it matches, nothing is resampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Robust z-score of each channel.

    Args:
        array: image ``(X, Y, Z)`` or ``(X, Y, Z, C)`` of any numeric dtype.

    Returns:
        ``float32`` array ``(C, X, Y, Z)`` (channel first, as the network wants it).
    """
    data = np.asarray(array)
    if data.ndim == 3:
        data = data[..., None]
    out = np.empty((data.shape[3], *data.shape[:3]), dtype=np.float32)
    for c in range(data.shape[3]):
        x = data[..., c].astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, 0.0).astype(np.float32)
        # Percentiles of a subsample are enough and much cheaper on big volumes.
        flat = x.ravel()
        sample = flat[:: max(1, flat.size // 2_000_000)]
        lo, hi = np.percentile(sample, [LOW_PERCENTILE, HIGH_PERCENTILE])
        clipped = np.clip(x, lo, hi)
        mean = float(clipped.mean())
        std = float(clipped.std())
        out[c] = (clipped - mean) / (std if std > 1e-8 else 1.0)
    return out


def zoom_factors(
    spacing: Sequence[float], target_spacing: Sequence[float] | None, tolerance: float = 0.01
) -> tuple[float, float, float] | None:
    """Per-axis factors ``image spacing / target spacing``, or None when no resampling is needed."""
    if target_spacing is None:
        return None
    f = tuple(float(s) / float(t) for s, t in zip(spacing, target_spacing, strict=True))
    if all(abs(v - 1.0) <= tolerance for v in f):
        return None
    return (f[0], f[1], f[2])


def resampled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, int, int]:
    s = tuple(max(1, int(round(n * f))) for n, f in zip(shape, factors, strict=True))
    return (s[0], s[1], s[2])


def resample(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample the spatial axes (the last three) of ``array`` to exactly ``shape``.

    Voxel centres are aligned at the corners' centres' scale (``scipy.ndimage.zoom`` with
    ``grid_mode=True``), i.e. the field of view is preserved. ``order`` 0 for labels, 1 for images
    and probabilities. Leading axes (channels) are kept.
    """
    shape3 = tuple(int(s) for s in shape)
    if tuple(array.shape[-3:]) == shape3:
        return array
    factors = [n / o for n, o in zip(shape3, array.shape[-3:], strict=True)]
    lead = array.shape[:-3]
    flat = array.reshape((-1, *array.shape[-3:]))
    out = np.empty((flat.shape[0], *shape3), dtype=array.dtype)
    for n in range(flat.shape[0]):
        z = ndimage.zoom(flat[n], factors, order=order, mode="nearest", grid_mode=True)
        # zoom may be off by one voxel from rounding: crop / edge-pad to the exact shape.
        z = z[: shape3[0], : shape3[1], : shape3[2]]
        pad = [(0, t - s) for s, t in zip(z.shape, shape3, strict=True)]
        if any(p[1] for p in pad):
            z = np.pad(z, pad, mode="edge")
        out[n] = z
    return out.reshape((*lead, *shape3))
