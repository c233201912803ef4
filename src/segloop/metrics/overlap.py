"""Overlap metrics per class: Dice and IoU (Jaccard)."""

from __future__ import annotations

import numpy as np


def _masks(pred: np.ndarray, ref: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    return pred == value, ref == value


def dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)`` of class ``value``.

    Args:
        pred, ref: integer label maps of the same shape (any dimensionality, e.g. ``(X, Y, Z)``).
        value: the class value to compare.

    Returns:
        A float in [0, 1]. When the class is absent from both maps the result is 1.0
        (nothing to find, nothing found).
    """
    p, r = _masks(pred, ref, value)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def iou(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    """Intersection over union ``|P∩R| / |P∪R|`` of class ``value``; 1.0 when absent from both."""
    p, r = _masks(pred, ref, value)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union
