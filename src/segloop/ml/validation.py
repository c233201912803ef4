"""Validation during training: the model's automatic result on the validation cases, scored as the
model's users get it (`segloop.ml.training`, step 7).

The cases are on the model grid (`segloop.ml.patches.Case`: class indices 0..K-1), so the
post-processing rule (class values, `segloop.ml.postprocess`) is mapped to indices first.
"""

from __future__ import annotations

import numpy as np
import torch

from segloop.metrics import dice
from segloop.ml.inference import predict_probabilities, set_mc_dropout
from segloop.ml.modelspec import ModelSpec
from segloop.ml.patches import Case
from segloop.ml.postprocess import confirm_on_validation, keep_largest


def dice_per_class(pred: np.ndarray, ref: np.ndarray, k: int) -> list[float]:
    """Dice of classes 1..k-1 between two index maps ``(X, Y, Z)`` (1 where both lack the class)."""
    return [dice(pred, ref, c) for c in range(1, k)]


def validate(net: torch.nn.Module, cases: list[Case], spec: ModelSpec, device: torch.device,
             confirm: bool = False) -> tuple[dict[str, float], tuple[int, ...]]:
    """Dice per class name of the validation cases as the model's users get it (post-processed),
    and the ``keep_largest`` rule it was scored with: the model's, or with ``confirm`` the part of it
    the validation images confirm (`segloop.ml.postprocess.confirm_on_validation`)."""
    was_training = net.training
    set_mc_dropout(net, False)
    by_index = tuple(spec.class_values.index(v) for v in spec.keep_largest)  # FOREGROUND (0) is index 0
    preds = []
    try:
        for case in cases:
            probs = predict_probabilities(
                net, case.image, None, spec.patch_size, spec.num_classes, device, extra_channels=spec.extra_channels
            )
            preds.append(probs.argmax(axis=0).astype(np.uint8))
    finally:
        net.train(was_training)
    classes = list(range(1, spec.num_classes))
    if confirm and by_index:
        by_index, mean = confirm_on_validation(preds, [c.label for c in cases], by_index, classes)
    else:
        scores = [dice_per_class(keep_largest(p, by_index)[0], c.label, spec.num_classes) for p, c in zip(preds, cases, strict=True)]
        mean = np.mean(np.array(scores), axis=0)
    rule = tuple(spec.class_values[i] for i in by_index)
    return {spec.class_names[c + 1]: float(mean[c]) for c in range(spec.num_classes - 1)}, rule
