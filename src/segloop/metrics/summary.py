"""`compare_labels`: all metrics of one prediction against one reference."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segloop.metrics.overlap import dice, iou
from segloop.metrics.surface import hausdorff95


def compare_labels(
    pred: np.ndarray,
    ref: np.ndarray,
    classes: Sequence[int] | Mapping[int, str],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, Any]:
    """Dice, IoU and HD95 per class, and their means.

    Args:
        pred, ref: integer label maps, shape ``(X, Y, Z)``.
        classes: foreground class values, or a mapping value -> name (then results are keyed by name).
        spacing: voxel size in mm.

    Returns:
        ``{"classes": {key: {"dice", "iou", "hd95", "pred_voxels", "ref_voxels"}},
        "mean": {"dice", "iou", "hd95"}}`` where key is the class name (mapping) or ``str(value)``.
        ``hd95`` is ``math.inf`` when a class is present in only one map; the mean HD95 is over
        the finite values (``math.inf`` if there is none, 0.0 if ``classes`` is empty).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    names = dict(classes) if isinstance(classes, Mapping) else {int(v): str(int(v)) for v in classes}
    per: dict[str, dict[str, float]] = {}
    for value, name in names.items():
        per[name] = {
            "dice": dice(pred, ref, value),
            "iou": iou(pred, ref, value),
            "hd95": hausdorff95(pred, ref, value, spacing),
            "pred_voxels": float((pred == value).sum()),
            "ref_voxels": float((ref == value).sum()),
        }
    return {"classes": per, "mean": mean_metrics(list(per.values()))}


def mean_metrics(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float]:
    """Mean of ``dice``, ``iou`` and ``hd95`` over rows (HD95: finite values only; ``None`` counts as infinite)."""
    out: dict[str, float] = {}
    for key in ("dice", "iou", "hd95"):
        raw = [r.get(key) for r in rows]
        vals = [math.inf if v is None else float(v) for v in raw]
        if key == "hd95":
            finite = [v for v in vals if math.isfinite(v)]
            out[key] = float(np.mean(finite)) if finite else (math.inf if vals else 0.0)
        else:
            out[key] = float(np.mean(vals)) if vals else 0.0
    return out
