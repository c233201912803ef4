"""Layer 3, metrics: overlap, surface distance and discrepancy maps between label volumes.

Plain functions over numpy arrays (no torch). All label arrays are integer class maps of the
same spatial shape ``(X, Y, Z)``; value 0 is background.
"""

from segloop.metrics.discrepancy import (
    AGREE,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    discrepancy_legend,
    discrepancy_map,
)
from segloop.metrics.overlap import dice, iou
from segloop.metrics.summary import compare_labels
from segloop.metrics.surface import hausdorff95

__all__ = [
    "AGREE",
    "FALSE_NEGATIVE",
    "FALSE_POSITIVE",
    "compare_labels",
    "dice",
    "discrepancy_legend",
    "discrepancy_map",
    "hausdorff95",
    "iou",
]
