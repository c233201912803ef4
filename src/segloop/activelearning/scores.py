"""Uncertainty scores: plain functions over probability arrays (numpy/scipy only, no torch).

Shapes: ``probs`` is one softmax output ``(C, X, Y, Z)`` (C classes, background first);
``samples`` is a stack of N stochastic outputs ``(N, C, X, Y, Z)`` (MC-dropout passes or
test-time-augmentation passes, already mapped back to one grid). Voxel maps are ``(X, Y, Z)``.
Every image score is the mean of a voxel map over a region (`map_score`: each foreground
class's dilated predicted region averaged over classes, the dilated predicted foreground, or the
whole volume), so scores are comparable between images of different sizes; on images where the
background is most of the volume, a whole-volume mean mostly measures how large the structure
is, not how uncertain it is. `expected_dice_loss` estimates ``1 - Dice`` of the prediction from
its own probabilities (per class, averaged). Higher = more uncertain = more
worth annotating.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EPS = 1e-8


def _check_probs(probs: np.ndarray, ndim: int, what: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {p.shape}")
    if p.shape[-4] < 2:
        raise ValueError(f"{what} needs at least 2 classes, got shape {p.shape}")
    return p


def voxel_entropy(probs: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Predictive entropy per voxel.

    Args:
        probs: ``(C, X, Y, Z)`` class probabilities (summing to 1 over C).
        normalize: divide by ``log(C)`` so the result lies in ``[0, 1]``.

    Returns:
        ``(X, Y, Z)`` float32 entropy (nats, or normalised).
    """
    p = _check_probs(probs, 4, "probs")
    h = -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=0)
    if normalize:
        h = h / np.float32(np.log(p.shape[0]))
    return np.asarray(np.clip(h, 0.0, None), dtype=np.float32)


def mutual_information(samples: np.ndarray, normalize: bool = True) -> np.ndarray:
    """BALD mutual information per voxel: ``H(mean_n p_n) - mean_n H(p_n)`` (epistemic part).

    Args:
        samples: ``(N, C, X, Y, Z)`` probabilities of N stochastic passes.
        normalize: divide by ``log(C)`` (result in ``[0, 1]``).

    Returns:
        ``(X, Y, Z)`` float32, >= 0; zero where all passes agree exactly.
    """
    s = _check_probs(samples, 5, "samples")
    total = voxel_entropy(s.mean(axis=0), normalize)
    expected = np.mean([voxel_entropy(p, normalize) for p in s], axis=0)
    return np.asarray(np.clip(total - expected, 0.0, None), dtype=np.float32)


def predictive_variance(samples: np.ndarray) -> np.ndarray:
    """Variance of the probabilities over the N passes, averaged over classes.

    Args:
        samples: ``(N, C, X, Y, Z)``.

    Returns:
        ``(X, Y, Z)`` float32 (at most 0.25).
    """
    s = _check_probs(samples, 5, "samples")
    return np.asarray(s.var(axis=0).mean(axis=0), dtype=np.float32)


def label_disagreement(samples: np.ndarray) -> np.ndarray:
    """Fraction of passes whose arg-max label differs from the majority label, per voxel.

    Args:
        samples: ``(N, C, X, Y, Z)``.

    Returns:
        ``(X, Y, Z)`` float32 in ``[0, 1 - 1/N]``; 0 where all passes give the same label.
    """
    s = _check_probs(samples, 5, "samples")
    n, c = s.shape[:2]
    labels = s.argmax(axis=1)  # (N, X, Y, Z)
    counts = np.stack([(labels == k).sum(axis=0) for k in range(c)])  # (C, X, Y, Z)
    return np.asarray(1.0 - counts.max(axis=0) / n, dtype=np.float32)


def foreground_region(probs: np.ndarray, dilation: int = 2, background_index: int = 0) -> np.ndarray | None:
    """Predicted foreground (arg-max is not background), dilated by ``dilation`` voxels.

    Args:
        probs: ``(C, X, Y, Z)`` (for several passes, give their mean).
        dilation: iterations of a 6-connected binary dilation (0: none).

    Returns:
        ``(X, Y, Z)`` bool mask, or ``None`` when nothing is predicted as foreground.
    """
    p = _check_probs(probs, 4, "probs")
    mask = p.argmax(axis=0) != background_index
    if not mask.any():
        return None
    if dilation > 0:
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=int(dilation))
    return np.asarray(mask, dtype=bool)


def region_mean(voxel_map: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean of ``voxel_map`` ``(X, Y, Z)`` over ``region`` (bool, same shape); whole volume when None or empty."""
    m = np.asarray(voxel_map, dtype=np.float64)
    if region is not None:
        r = np.asarray(region, dtype=bool)
        if r.shape != m.shape:
            raise ValueError(f"region shape {r.shape} does not match map shape {m.shape}")
        if r.any():
            return float(m[r].mean())
    return float(m.mean())


def mean_entropy(probs: np.ndarray, foreground_only: bool = False, dilation: int = 2) -> float:
    """Image score of the ``entropy`` strategy: mean normalised voxel entropy of ``probs`` ``(C, X, Y, Z)``.

    With ``foreground_only`` the mean is over the predicted foreground dilated by ``dilation``
    voxels (the whole volume when nothing is predicted).
    """
    region = foreground_region(probs, dilation) if foreground_only else None
    return region_mean(voxel_entropy(probs), region)


def class_regions(probs: np.ndarray, dilation: int = 2, background_index: int = 0) -> list[np.ndarray | None]:
    """Per foreground channel of ``probs`` ``(C, X, Y, Z)``: its arg-max region dilated by ``dilation``
    voxels (None where the class is not predicted anywhere)."""
    p = _check_probs(probs, 4, "probs")
    labels = p.argmax(axis=0)
    structure = ndimage.generate_binary_structure(3, 1)
    out: list[np.ndarray | None] = []
    for c in range(p.shape[0]):
        if c == background_index:
            continue
        mask = labels == c
        if not mask.any():
            out.append(None)
            continue
        if dilation > 0:
            mask = ndimage.binary_dilation(mask, structure, iterations=int(dilation))
        out.append(np.asarray(mask, dtype=bool))
    return out


def class_entropy(probs: np.ndarray, dilation: int = 2, background_index: int = 0) -> float:
    """Mean over foreground classes of the mean normalised entropy over that class's dilated
    predicted region (its structure and boundary); a class predicted nowhere scores 1 (maximal:
    the model misses a whole structure). Background no longer dilutes the score, and a small
    class weighs as much as a large one.
    """
    h = voxel_entropy(probs)
    values = [1.0 if r is None else float(h[r].mean()) for r in class_regions(probs, dilation, background_index)]
    return float(np.mean(values)) if values else 0.0


def soft_dice_agreement(probs: np.ndarray, background_index: int = 0) -> np.ndarray:
    """Per foreground class, the soft Dice between the arg-max prediction and the probabilities:
    ``2 * sum(M_c * p_c) / (sum(M_c) + sum(p_c))`` (the Dice the model expects of its own
    prediction); 1 for a class neither predicted nor probable anywhere.

    Returns:
        ``(C - 1,)`` float64 in ``[0, 1]``.
    """
    p = _check_probs(probs, 4, "probs")
    labels = p.argmax(axis=0)
    out = []
    for c in range(p.shape[0]):
        if c == background_index:
            continue
        m = labels == c
        pc = p[c].astype(np.float64)
        denom = float(m.sum()) + float(pc.sum())
        out.append(1.0 if denom < 1e-6 else 2.0 * float(pc[m].sum()) / denom)
    return np.asarray(out, dtype=np.float64)


def expected_dice_loss(probs: np.ndarray, background_index: int = 0) -> float:
    """Image score of the ``soft-dice`` strategy: ``1 -`` mean over foreground classes of
    `soft_dice_agreement` (the model's own estimate of its ``1 - Dice``)."""
    a = soft_dice_agreement(probs, background_index)
    return float(1.0 - a.mean()) if a.size else 0.0


def pass_dice_disagreement(samples: np.ndarray, background_index: int = 0) -> float:
    """``1 -`` mean Dice between each pass's arg-max and the mean prediction's arg-max, per
    foreground class then averaged (0 when every pass segments exactly alike)."""
    s = _check_probs(samples, 5, "samples")
    ref = s.mean(axis=0).argmax(axis=0)
    labels = s.argmax(axis=1)
    values = []
    for c in range(s.shape[1]):
        if c == background_index:
            continue
        r = ref == c
        for lab in labels:
            m = lab == c
            denom = int(m.sum()) + int(r.sum())
            values.append(1.0 if denom == 0 else 2.0 * int((m & r).sum()) / denom)
    return float(1.0 - np.mean(values)) if values else 0.0


REGIONS = ("class", "foreground", "volume")


def map_score(voxel_map: np.ndarray, probs: np.ndarray, region: str = "class", dilation: int = 2) -> float:
    """Image score of a voxel map ``(X, Y, Z)`` over a region taken from ``probs`` ``(C, X, Y, Z)``.

    ``region``: ``"class"`` (mean over each foreground class's dilated predicted region, averaged
    over classes; a class predicted nowhere scores the map's maximum), ``"foreground"`` (the
    dilated predicted foreground, `foreground_region`) or ``"volume"`` (every voxel).
    """
    if region == "volume":
        return region_mean(voxel_map)
    if region == "foreground":
        return region_mean(voxel_map, foreground_region(probs, dilation))
    if region != "class":
        raise ValueError(f"unknown region {region!r} (known: {', '.join(REGIONS)})")
    m = np.asarray(voxel_map, dtype=np.float64)
    top = float(m.max()) if m.size else 0.0
    values = [top if r is None else float(m[r].mean()) for r in class_regions(probs, dilation)]
    return float(np.mean(values)) if values else 0.0


def sample_score(samples: np.ndarray, metric: str, foreground_only: bool = False, dilation: int = 2,
                 region: str | None = None) -> float:
    """Image score over N passes ``(N, C, X, Y, Z)``.

    Args:
        metric: ``"mi"`` (mutual information), ``"variance"``, ``"disagreement"`` (label
            disagreement), ``"entropy"`` (entropy of the mean prediction) or ``"dice"``
            (`pass_dice_disagreement`: per class, region-free).
        foreground_only, dilation: restrict to the mean prediction's dilated foreground.
        region: `map_score`'s region (overrides ``foreground_only``).
    """
    s = _check_probs(samples, 5, "samples")
    if metric == "dice":
        return pass_dice_disagreement(s)
    mean = s.mean(axis=0)
    where = region or ("foreground" if foreground_only else "volume")
    if metric == "mi":
        vmap = mutual_information(s)
    elif metric == "variance":
        vmap = predictive_variance(s)
    elif metric == "disagreement":
        vmap = label_disagreement(s)
    elif metric == "entropy":
        vmap = voxel_entropy(mean)
    else:
        raise ValueError(f"unknown metric {metric!r} (known: mi, variance, disagreement, entropy, dice)")
    return map_score(vmap, mean, where, dilation)
