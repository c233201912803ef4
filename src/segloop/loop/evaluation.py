"""Scoring a model version on (image, reference) pairs: Dice and IoU per class (no store needed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from segloop.heap import release_free_heap
from segloop.imaging.volume import Volume
from segloop.metrics import dice, iou


def overlap_per_class(pred: np.ndarray, ref: np.ndarray, classes: Mapping[int, str]) -> dict[str, dict[str, float]]:
    """``{class name: {"dice", "iou"}}`` of two label maps ``(X, Y, Z)``."""
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} does not match reference shape {r.shape}")
    return {name: {"dice": float(dice(p, r, v)), "iou": float(iou(p, r, v))} for v, name in classes.items()}


def summarize(rows: list[dict[str, dict[str, float]]], classes: Iterable[str]) -> dict[str, Any]:
    """Means of per-image ``{class: {"dice", "iou"}}`` rows: ``{"mean": {class: {...}}, "mean_dice", "mean_iou"}``."""
    names = list(classes)
    mean = {
        n: {k: float(np.mean([row[n][k] for row in rows])) if rows else 0.0 for k in ("dice", "iou")} for n in names
    }
    return {
        "mean": mean,
        "mean_dice": float(np.mean([m["dice"] for m in mean.values()])) if names else 0.0,
        "mean_iou": float(np.mean([m["iou"] for m in mean.values()])) if names else 0.0,
        "images": len(rows),
    }


def evaluate_pairs(predictor: Any, pairs: Iterable[tuple[Volume, np.ndarray]]) -> dict[str, Any]:
    """Automatic segmentation of each image, compared with its reference.

    Args:
        predictor: a `segloop.ml.predictor.Predictor`.
        pairs: ``(image, reference label (X, Y, Z))``.

    Returns:
        `summarize` of the per-image Dice/IoU, keyed by the model's class names.
    """
    classes = {int(v): predictor.spec.name_of(int(v)) for v in predictor.spec.foreground}
    rows = []
    for image, ref in pairs:
        result = predictor.predict(image)
        rows.append(overlap_per_class(result.label.array, np.asarray(getattr(ref, "array", ref)), classes))
        del result
        release_free_heap(min_interval=1.0)  # the whole-volume pass's arrays (segloop.heap)
    return summarize(rows, classes.values())
