"""Discrepancy map: one label volume marking, per class, agreement, false positives and false negatives.

Encoding (``class_values`` in the given order, ``k`` = 0-based position of a class in it)::

    0            background agrees with background (or a class not listed)
    3*k + 1      AGREE           prediction and reference both hold class k
    3*k + 2      FALSE_POSITIVE  prediction holds class k, the reference does not
    3*k + 3      FALSE_NEGATIVE  reference holds class k, the prediction does not

A voxel where the prediction holds listed class a and the reference a different listed class b
is both a false positive of a and a false negative of b; it is written as the FALSE_NEGATIVE
of b (the missed structure is what a reviewer corrects). With two classes (1, 2) the map's
values are 1/2/3 for class 1 and 4/5/6 for class 2. `discrepancy_legend` gives names and
colours for a viewer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AGREE = 1
FALSE_POSITIVE = 2
FALSE_NEGATIVE = 3

_KIND_NAMES = {AGREE: "agree", FALSE_POSITIVE: "false positive", FALSE_NEGATIVE: "false negative"}
_KIND_COLORS = {AGREE: (0, 200, 0), FALSE_POSITIVE: (230, 30, 30), FALSE_NEGATIVE: (30, 90, 230)}


def discrepancy_map(pred: np.ndarray, ref: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """Label volume of agreement / false positive / false negative per class.

    Args:
        pred, ref: integer label maps of the same shape ``(X, Y, Z)``.
        class_values: foreground class values to encode (order fixes the codes, see module doc).

    Returns:
        ``uint8`` array of the same shape, encoded as described in the module docstring.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    if 3 * len(class_values) > 255:
        raise ValueError("too many classes for a uint8 discrepancy map (at most 85)")
    out = np.zeros(pred.shape, dtype=np.uint8)
    for k, value in enumerate(class_values):
        p = pred == value
        r = ref == value
        out[p & r] = 3 * k + AGREE
        out[p & ~r] = 3 * k + FALSE_POSITIVE
    # False negatives last so that they win over another class's false positive.
    for k, value in enumerate(class_values):
        out[(ref == value) & (pred != value)] = 3 * k + FALSE_NEGATIVE
    return out


def discrepancy_legend(
    class_values: Sequence[int], names: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """Entries ``{value, name, color, class_value, kind}`` describing the codes of `discrepancy_map`."""
    legend: list[dict[str, Any]] = []
    for k, value in enumerate(class_values):
        cname = names.get(value, str(value)) if names else str(value)
        for kind in (AGREE, FALSE_POSITIVE, FALSE_NEGATIVE):
            legend.append(
                {
                    "value": 3 * k + kind,
                    "name": f"{cname}: {_KIND_NAMES[kind]}",
                    "color": _KIND_COLORS[kind],
                    "class_value": int(value),
                    "kind": _KIND_NAMES[kind],
                }
            )
    return legend
