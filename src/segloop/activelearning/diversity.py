"""Diversity-aware batch selection: avoid near-duplicate images in one batch (numpy/scipy only).

Each image gets a cheap descriptor (`image_descriptor`): its robustly normalised intensities
resampled to a coarse fixed grid, plus an intensity histogram, centred and L2-normalised, so the
cosine similarity of two descriptors is their dot product (1 for identical images).
`diverse_order` then picks greedily: the next image maximises
``score - weight * max cosine similarity to the images already picked``; an image at least
``duplicate_threshold`` similar to a picked one is only taken when nothing else is left.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

GRID = (8, 8, 8)
BINS = 16


def image_descriptor(array: np.ndarray, grid: Sequence[int] = GRID, bins: int = BINS) -> np.ndarray:
    """A unit-length float32 vector describing an image.

    Args:
        array: image ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (channels are averaged).
        grid: coarse grid the intensities are resampled to.
        bins: histogram bins over the normalised range.

    Returns:
        ``(prod(grid) + bins,)`` float32 with norm 1 (zeros only if the descriptor itself is constant).
    """
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 4:
        a = a.mean(axis=3)
    if a.ndim != 3:
        raise ValueError(f"image must be 3-D (or 4-D with channels), got shape {a.shape}")
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)
    coarse = ndimage.zoom(a, [g / s for g, s in zip(grid, a.shape, strict=True)], order=1, grid_mode=True, mode="nearest")
    coarse = coarse[: grid[0], : grid[1], : grid[2]]
    pad = [(0, g - s) for s, g in zip(coarse.shape, grid, strict=True)]
    coarse = np.pad(coarse, pad, mode="edge")
    hist = np.histogram(a, bins=bins, range=(0.0, 1.0))[0].astype(np.float32) / max(1, a.size)
    v = np.concatenate([coarse.ravel(), hist * np.sqrt(coarse.size / bins)])
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 1e-8 else np.zeros_like(v)).astype(np.float32)


def cosine_similarity(descriptors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity ``(N, N)`` of descriptors ``(N, D)`` (rows need not be unit length)."""
    d = np.asarray(descriptors, dtype=np.float64)
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    u = d / np.where(norms > 1e-12, norms, 1.0)
    return np.clip(u @ u.T, -1.0, 1.0)


def diverse_order(
    scores: Sequence[float],
    descriptors: np.ndarray,
    n: int | None = None,
    weight: float = 0.5,
    duplicate_threshold: float = 0.98,
) -> list[int]:
    """Indices of the ``n`` images to take (in pick order), trading informativeness for diversity.

    Args:
        scores: ``(N,)`` informativeness (higher first); min-max scaled to ``[0, 1]`` internally.
        descriptors: ``(N, D)`` from `image_descriptor`.
        n: how many to pick (default all N).
        weight: penalty on the maximum similarity to already picked images (0: plain ranking).
        duplicate_threshold: images at least this similar to a picked one come last.

    Returns:
        ``n`` distinct indices.
    """
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(descriptors, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != s.shape[0]:
        raise ValueError(f"descriptors {d.shape} do not match {s.shape[0]} scores")
    total = s.shape[0]
    n = total if n is None else max(0, min(int(n), total))
    span = float(s.max() - s.min()) if total else 0.0
    scaled = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    sim = cosine_similarity(d) if total else np.zeros((0, 0))
    max_sim = np.full(total, -1.0)
    free = np.ones(total, dtype=bool)
    picked: list[int] = []
    for _ in range(n):
        penalty = np.where(max_sim > 0, max_sim, 0.0) if picked else np.zeros(total)
        value = scaled - weight * penalty
        ok = free & (max_sim < duplicate_threshold)
        pool = ok if ok.any() else free
        cand = np.flatnonzero(pool)
        best = int(cand[np.argmax(value[cand])])  # first index wins ties: stable
        picked.append(best)
        free[best] = False
        max_sim = np.maximum(max_sim, sim[best])
    return picked
