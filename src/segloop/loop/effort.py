"""Annotation-effort model: the minutes of a person's work an annotation would have cost.

The virtual user places clicks; a person would also look through the slices of the structure to
decide whether the result is right (and would brush where clicks do not reach). The model counts
three actions, each with a fixed time:

========================  =========  ===========================================================
action                    seconds    source
========================  =========  ===========================================================
one corrective click      2.4        Bearman et al., "What's the point: semantic segmentation
                                     with point supervision", ECCV 2016: 2.4 s per point click
                                     (natural images, locating the object included). Medical
                                     click studies report similar orders (a few seconds); the
                                     figure for 3-D MR/CT is an **assumption**.
one brush stroke          5.0        **assumption** (no published per-stroke time was checked);
                                     used for the manual baseline: one stroke per class and slice.
one reviewed slice        1.5        **assumption**: scrolling through the slices that hold the
                                     structure, looking at each long enough to accept or reject.
========================  =========  ===========================================================

What needs a stroke: a class on a slice whose errors reach farther than
``stroke_tolerance_voxels`` (1) from the reference's outline in the slice's plane
(`segloop.loop.annotator.residual_strokes`). Boundary disagreement within a voxel is what two
experts differ by anyway (hippocampus inter-rater Dice ~0.85–0.9 is mostly that), so a user
leaves it; counting it (tolerance 0) charged a stroke on nearly every slice and made the
virtual user's brushing cost as much as drawing by hand.

`reviewed_slices` counts the slices (along the last array axis) that hold foreground in the saved
label or in the reference: the slices a careful reviewer has to look at. `manual_strokes` is the
baseline of drawing every class from scratch: one stroke per class per slice that holds it.
Change the constants through `EffortModel`; every report states the ones it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CLICK_SECONDS = 2.4
BRUSH_STROKE_SECONDS = 5.0
REVIEW_SLICE_SECONDS = 1.5
SOURCES = {
    "click_seconds": "Bearman et al. 2016 (ECCV), 2.4 s per point click on natural images; for 3-D medical images an assumption",
    "brush_stroke_seconds": "assumption",
    "review_slice_seconds": "assumption",
    "stroke_tolerance_voxels": "assumption: about the boundary disagreement between expert raters",
}


@dataclass(frozen=True)
class EffortModel:
    """Seconds per action (see the module docstring for their sources)."""

    click_seconds: float = CLICK_SECONDS
    brush_stroke_seconds: float = BRUSH_STROKE_SECONDS
    review_slice_seconds: float = REVIEW_SLICE_SECONDS
    stroke_tolerance_voxels: int = 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def seconds(self, clicks: float = 0, strokes: float = 0, reviewed_slices: float = 0) -> float:
        """Seconds of work for the given numbers of actions."""
        for name, value in (("clicks", clicks), ("strokes", strokes), ("reviewed_slices", reviewed_slices)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        return float(clicks * self.click_seconds + strokes * self.brush_stroke_seconds
                     + reviewed_slices * self.review_slice_seconds)

    def minutes(self, clicks: float = 0, strokes: float = 0, reviewed_slices: float = 0) -> float:
        return self.seconds(clicks, strokes, reviewed_slices) / 60.0

    def describe(self) -> dict[str, Any]:
        """The constants and their sources (for reports)."""
        return {**asdict(self), "sources": dict(SOURCES)}


def _slices_with(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"label maps must be 3-D, got shape {m.shape}")
    return np.asarray(m.any(axis=(0, 1)))


def reviewed_slices(saved: np.ndarray, reference: np.ndarray) -> int:
    """Slices (last axis) with foreground in ``saved`` or ``reference`` (label maps ``(X, Y, Z)``)."""
    s, r = np.asarray(saved), np.asarray(reference)
    if s.shape != r.shape:
        raise ValueError(f"saved label shape {s.shape} does not match reference shape {r.shape}")
    return int((_slices_with(s > 0) | _slices_with(r > 0)).sum())


def manual_strokes(reference: np.ndarray, classes: Sequence[int]) -> int:
    """Brush strokes to draw ``reference`` from scratch: one per class and slice holding that class."""
    r = np.asarray(reference)
    return int(sum(_slices_with(r == int(c)).sum() for c in classes))


def annotation_effort(model: EffortModel, clicks: int, saved: np.ndarray, reference: np.ndarray,
                      classes: Sequence[int], strokes: int = 0) -> dict[str, Any]:
    """Effort of one annotation with the virtual user and of drawing it by hand.

    Args:
        clicks: the user's clicks; strokes: brush strokes after them (the virtual user's
            ``finish="brush"``, `segloop.loop.annotator.residual_strokes`).

    Returns:
        ``{"clicks", "strokes", "reviewed_slices", "minutes"}`` (clicks + strokes + review) and
        ``"manual_strokes"``, ``"manual_minutes"`` (every class brushed on every slice it appears
        in, then reviewed).
    """
    if clicks < 0:
        raise ValueError(f"clicks must be >= 0, got {clicks}")
    if strokes < 0:
        raise ValueError(f"strokes must be >= 0, got {strokes}")
    review = reviewed_slices(saved, reference)
    manual = manual_strokes(reference, classes)
    return {"clicks": int(clicks), "strokes": int(strokes), "reviewed_slices": review,
            "minutes": model.minutes(clicks=clicks, strokes=strokes, reviewed_slices=review),
            "manual_strokes": manual, "manual_minutes": model.minutes(strokes=manual, reviewed_slices=review)}
