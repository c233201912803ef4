"""`evaluate_model`: automatic segmentation of labelled images scored against their final labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segloop.metrics.summary import compare_labels, mean_metrics
from segloop.ml.predictor import Predictor
from segloop.store.base import Datastore


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate_model(
    store: Datastore,
    model: str,
    version: int | None = None,
    image_ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Segment each image automatically and compare with its latest final label revision.

    Args:
        store: the datastore.
        model, version: the model version (default: current).
        image_ids: images to evaluate (default: every image with a final label).
        progress: called as ``progress(done, total)`` after each image.
        predictor: an already loaded predictor to reuse (must be ``model``).

    Returns:
        ``{"model", "version", "classes": [names], "per_image": [{"image_id", "name", "revision",
        "classes": {name: {"dice", "iou", "hd95"}}}], "mean": {name: {"dice", "iou", "hd95"}},
        "mean_dice"}``. HD95 is in mm; ``None`` where a class is missing from exactly one of
        prediction and reference (infinite distance) and left out of the means.

    Raises:
        ValueError: an image without a final label, or no image to evaluate.
        NotFoundError: unknown model, version or image.
    """
    pred = predictor or Predictor.load(store, model, version)
    finals = {r.image_id: r for r in store.final_labels()}
    ids = list(image_ids) if image_ids is not None else list(finals)
    if not ids:
        raise ValueError("no images to evaluate: none has a final label")
    for image_id in ids:
        store.get_image(image_id)  # NotFoundError for an unknown id
        if image_id not in finals:
            raise ValueError(f"image {image_id!r} has no final label to compare with")
    names = {v: pred.spec.name_of(v) for v in pred.spec.foreground}
    per_image: list[dict[str, Any]] = []
    for n, image_id in enumerate(ids, 1):
        image = store.load_image(image_id)
        rev = finals[image_id]
        ref = store.load_label(image_id, rev.revision)
        result = pred.predict(image)
        scores = compare_labels(result.label.array, np.asarray(ref.array), names, image.spacing)
        per_image.append(
            {
                "image_id": image_id,
                "name": store.get_image(image_id).name,
                "revision": rev.revision,
                "classes": {
                    k: {"dice": v["dice"], "iou": v["iou"], "hd95": _finite(v["hd95"])}
                    for k, v in scores["classes"].items()
                },
            }
        )
        if progress is not None:
            progress(n, len(ids))
    mean = {name: mean_metrics([row["classes"][name] for row in per_image]) for name in names.values()}
    for m in mean.values():
        m["hd95"] = _finite(m["hd95"])  # type: ignore[assignment]
    return {
        "model": model,
        "version": pred.version,
        "classes": list(names.values()),
        "per_image": per_image,
        "mean": mean,
        "mean_dice": float(np.mean([m["dice"] for m in mean.values()])) if mean else None,
    }
