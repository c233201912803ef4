"""Annotators: who turns an image (and the shared model's help) into a label.

`Annotator` is the protocol the loop talks to: a person working through the server later, or
`VirtualAnnotator`, which simulates a careful user with the interactive session: it starts from
the automatic prediction and, for up to ``clicks_per_class`` rounds, places one corrective click
per foreground class (`segloop.ml.virtual_user.next_click` against the reference) wherever that
class is still wrong. Then, as ``finish`` says:

- ``"brush"`` (the emulation's default, ``segloop emulate --finish``): the user brushes what the clicks left wrong, as a careful annotator
  does before saving a final label: the saved label is the reference, and the strokes it took
  (one per class and slice still wrong after the clicks beyond a voxel of boundary
  disagreement, `residual_strokes`) are counted for the
  effort model. This is the oracle-label assumption of active-learning benchmarks, with the
  correction's cost made explicit instead of hidden.
- ``"clicks"`` (the class's default): the session's result after the clicks is saved as it is (the label is only as
  good as the model and the click budget make it; a weak early model saves weak labels).

`Annotation.clicked_dice` always records the Dice of the clicked result, before any brushing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from segloop.imaging.volume import Volume
from segloop.metrics.overlap import dice
from segloop.store.records import LabelStatus


@dataclass
class AnnotationTask:
    """One image to annotate.

    Attributes:
        image_id: the store's id.
        image: the image volume ``(X, Y, Z[, C])``.
        predictor: the shared model (`segloop.ml.predictor.Predictor`) at the loop's current version, or None.
        base_revision: the image's latest revision (to save on top of).
    """

    image_id: str
    image: Volume
    predictor: Any
    base_revision: int | None


@dataclass
class Annotation:
    """An annotator's result: ``label`` ``(X, Y, Z)`` uint8 class values on the image grid."""

    label: np.ndarray
    clicks: int = 0
    clicks_per_class: dict[int, int] = field(default_factory=dict)
    strokes: int = 0  # brush strokes after the clicks (finish="brush")
    clicked_dice: dict[int, float] = field(default_factory=dict)  # per class, the clicked result vs the reference
    status: LabelStatus = "final"
    source: str = "interactive"
    author: str = "annotator"
    seconds: float = 0.0


FINISH_MODES = ("brush", "clicks")


STROKE_TOLERANCE = 1
"""Voxels of in-plane boundary disagreement a user leaves as it is (see `residual_strokes`)."""


def _in_plane(mask: np.ndarray, iterations: int, grow: bool) -> np.ndarray:
    """``mask`` ``(X, Y, Z)`` dilated (``grow``) or eroded by ``iterations`` voxels within each
    slice (last axis), 8-connected."""
    from scipy import ndimage

    footprint = np.ones((3, 3, 1), dtype=bool)
    op = ndimage.binary_dilation if grow else ndimage.binary_erosion
    return np.asarray(op(mask, structure=footprint, iterations=iterations, border_value=0))


def residual_strokes(label: np.ndarray, reference: np.ndarray, classes: list[int],
                     tolerance: int = STROKE_TOLERANCE) -> int:
    """Brush strokes to turn ``label`` into ``reference`` (both ``(X, Y, Z)``): one per class and
    slice (last axis) where that class's mask still differs by more than ``tolerance`` voxels of
    boundary — the unit of the effort model's manual baseline
    (`segloop.loop.effort.manual_strokes`).

    An error voxel within ``tolerance`` voxels (in the slice's plane) of the reference's outline of
    that class is boundary disagreement, which a user does not brush: two experts outlining the
    same structure differ by about a voxel along its whole boundary (hippocampus Dice between
    raters ~0.85–0.9). A slice needs a stroke when some error lies farther from the outline: a
    missed or extra piece, a wrong lump. ``tolerance=0``: any wrong voxel (the earlier model, an
    upper bound). The saved label is still the reference (`VirtualAnnotator`, ``finish="brush"``).
    """
    a, r = np.asarray(label), np.asarray(reference)
    if a.shape != r.shape:
        raise ValueError(f"label shape {a.shape} does not match reference shape {r.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 voxels, got {tolerance}")
    total = 0
    for c in classes:
        ref_c = r == c
        wrong = (a == c) != ref_c
        if tolerance > 0 and wrong.any():
            band = _in_plane(ref_c, tolerance, True) & ~_in_plane(ref_c, tolerance, False)
            wrong &= ~band
        total += int(wrong.any(axis=(0, 1)).sum())
    return total


class Annotator(Protocol):
    def annotate(self, task: AnnotationTask) -> Annotation: ...


class VirtualAnnotator:
    """A simulated user: automatic prediction + up to ``clicks_per_class`` clicks per class, then
    (``finish="brush"``) brush strokes for what is left.

    Args:
        references: image id -> reference label ``(X, Y, Z)`` (a mapping or a function).
        clicks_per_class: click budget per foreground class and image.
        satisfied_dice: a class whose Dice against the reference is at least this gets no more
            clicks (a user does not correct what looks right); None: click while any error is left.
        seed: tie-breaking of click positions (per image: seed and image id).
        author: recorded as the revisions' author.
        finish: ``"brush"`` (residual errors brushed: the reference is saved) or ``"clicks"``
            (the clicked result is saved); see the module docstring.
        stroke_tolerance: voxels of boundary disagreement that cost no stroke (`residual_strokes`).
    """

    def __init__(
        self,
        references: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
        clicks_per_class: int = 3,
        satisfied_dice: float | None = 0.95,
        seed: int = 0,
        author: str = "virtual-user",
        finish: str = "clicks",
        stroke_tolerance: int = STROKE_TOLERANCE,
    ) -> None:
        if clicks_per_class < 0:
            raise ValueError(f"clicks_per_class must be >= 0, got {clicks_per_class}")
        if finish not in FINISH_MODES:
            raise ValueError(f"finish must be one of {', '.join(FINISH_MODES)}, got {finish!r}")
        if stroke_tolerance < 0:
            raise ValueError(f"stroke_tolerance must be >= 0 voxels, got {stroke_tolerance}")
        self.finish = finish
        self.stroke_tolerance = int(stroke_tolerance)
        self._refs = references
        self.clicks_per_class = int(clicks_per_class)
        self.satisfied_dice = satisfied_dice
        self.seed = int(seed)
        self.author = author

    def reference(self, image_id: str) -> np.ndarray:
        ref = self._refs(image_id) if callable(self._refs) else self._refs[image_id]
        return np.asarray(getattr(ref, "array", ref))

    def annotate(self, task: AnnotationTask) -> Annotation:
        """Correct the automatic prediction of ``task.image`` with clicks (see the class docstring)."""
        import zlib

        from segloop.ml.virtual_user import next_click

        t0 = time.perf_counter()
        if task.predictor is None:
            raise ValueError("the virtual user needs the shared model (no trained version yet)")
        ref = self.reference(task.image_id)
        if ref.shape != task.image.shape:
            raise ValueError(f"reference shape {ref.shape} does not match image {task.image_id} shape {task.image.shape}")
        rng = np.random.default_rng([self.seed, zlib.crc32(task.image_id.encode())])
        session = task.predictor.session(task.image)
        classes = [int(v) for v in task.predictor.class_values if int(v) != 0]
        spent = {c: 0 for c in classes}
        spacing = task.image.spacing
        for _ in range(self.clicks_per_class):
            label = np.asarray(session.prediction.label.array)
            clicks = []
            for c in classes:
                if self.satisfied_dice is not None and dice(label, ref, c) >= self.satisfied_dice:
                    continue
                click = next_click(label, ref, [c], rng, spacing)
                if click is not None:
                    clicks.append(click)
                    spent[c] += 1
            if not clicks:
                break
            session.add_clicks(clicks)
        clicked = np.asarray(session.prediction.label.array, dtype=np.uint8)
        strokes = 0
        final = clicked
        if self.finish == "brush":
            strokes = residual_strokes(clicked, ref, classes, self.stroke_tolerance)
            final = ref.astype(np.uint8, copy=True)
        return Annotation(
            label=final,
            clicks=sum(spent.values()),
            clicks_per_class=spent,
            strokes=strokes,
            clicked_dice={c: dice(clicked, ref, c) for c in classes},
            status="final",
            source="interactive",
            author=self.author,
            seconds=time.perf_counter() - t0,
        )
