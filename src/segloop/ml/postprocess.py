"""Post-processing of automatic segmentations: keep the largest connected component.

nnU-Net removes every connected component but the largest -- of the foreground as a whole, then
of each class -- where its cross-validation shows that this helps. Here the decision comes from
the training labels themselves, which every training (and fine-tune) has: a structure whose
largest component holds at least `MIN_SHARE` of its voxels in *every* training label is one
piece, so stray blobs of it in a prediction are false positives and go (`decide_keep_largest`).
Structures that come in several pieces in any label -- lesions, paired organs, vessels -- are
left alone. The rule is a list of class values; `FOREGROUND` (0) stands for the foreground as a
whole (every class together), which is applied first.

Components are 26-connected (face, edge and corner neighbours), as in nnU-Net. Only automatic
segmentations are post-processed (`Predictor.predict`, the start of an interactive session);
what a user's clicks add stays, even where it is a second piece.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from segloop.metrics import dice

FOREGROUND = 0  # in a rule: the foreground as a whole
MIN_SHARE = 0.95  # a structure is "one piece" in a label when its largest component holds this share
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s voxels (None: empty)."""
    found = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return found[0] if found and found[0] is not None else None


def _share_of(mask: np.ndarray) -> float:
    comps, n = ndimage.label(mask, structure=_FULL)
    if n <= 1:
        return 1.0
    sizes = np.bincount(comps.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def largest_share(mask: np.ndarray) -> float | None:
    """Share of ``mask``'s voxels ``(X, Y, Z)`` in its largest 26-connected component; None when empty."""
    box = _box(mask)
    return None if box is None else _share_of(mask[box])


def label_shares(label: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    """`largest_share` of the foreground (`FOREGROUND`) and of each class value of ``values`` present in
    ``label`` ``(X, Y, Z)``, each measured on its own bounding box (one pass finds them all)."""
    arr = np.asarray(label)
    ints = arr if arr.dtype.kind in "iu" else arr.astype(np.int64)
    boxes = ndimage.find_objects(ints)
    present = [b for b in boxes if b is not None]
    out: dict[int, float] = {}
    if not present:
        return out
    union = tuple(slice(min(b[a].start for b in present), max(b[a].stop for b in present)) for a in range(arr.ndim))
    out[FOREGROUND] = _share_of(arr[union] != 0)
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is not None:
            out[int(v)] = _share_of(arr[box] == v)
    return out


def decide_from_shares(shares: Iterable[Mapping[int, float]], min_share: float = MIN_SHARE) -> tuple[int, ...]:
    """The rule from each label's `label_shares`: the structures one piece in every label holding them."""
    smallest: dict[int, float] = {}
    for per_label in shares:
        for v, s in per_label.items():
            smallest[v] = min(s, smallest.get(v, 1.0))
    return tuple(v for v in sorted(smallest) if smallest[v] >= min_share)


def decide_keep_largest(
    labels: Iterable[np.ndarray], values: Sequence[int], min_share: float = MIN_SHARE
) -> tuple[int, ...]:
    """The rule for a model: `FOREGROUND` when the foreground is one piece in every label, then each
    class value of ``values`` that is one piece in every label holding it.

    Args:
        labels: training labels ``(X, Y, Z)`` holding values of ``values`` (0: background).
        values: the foreground class values.
        min_share: the largest component's share of a structure's voxels that makes it one piece.
    """
    return decide_from_shares((label_shares(label, values) for label in labels), min_share)


def _keep_largest_in(mask: np.ndarray) -> np.ndarray | None:
    """Voxels of ``mask`` outside its largest component (a boolean array), or None when there are none."""
    box = _box(mask)
    if box is None:
        return None
    comps, n = ndimage.label(mask[box], structure=_FULL)
    if n <= 1:
        return None
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    drop = np.zeros(mask.shape, dtype=bool)
    drop[box] = (comps != 0) & (comps != int(sizes.argmax()))
    return drop


def keep_largest(label: np.ndarray, rule: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``rule`` (see `decide_keep_largest`) to a label map ``(X, Y, Z)``.

    Returns:
        the post-processed label (a new array where anything changed, else ``label`` itself) and the
        boolean map of the voxels set to background (None when nothing changed).
    """
    if not rule:
        return label, None
    out = label
    dropped: np.ndarray | None = None
    for v in rule:
        drop = _keep_largest_in(out != 0 if v == FOREGROUND else out == v)
        if drop is None:
            continue
        if dropped is None:
            out, dropped = label.copy(), drop
        else:
            dropped |= drop
        out[drop] = 0
    return out, dropped


def confirm_on_validation(
    preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], rule: Sequence[int], classes: Sequence[int]
) -> tuple[tuple[int, ...], np.ndarray]:
    """nnU-Net's check of the rule, where there are validation images: starting from no
    post-processing, each entry of ``rule`` in turn (the foreground first) is added on top of those
    kept when the mean Dice over ``classes`` and cases is not lower with it (a tie keeps it: the
    labels said the structure is one piece).

    Args:
        preds: the raw (arg-max) predictions ``(X, Y, Z)`` of the validation images.
        refs: their reference labels, in the same values.
        rule: the rule from the training labels (`decide_keep_largest`), in those values.
        classes: the foreground values to score.
    Returns:
        the rule kept and the Dice per class under it (``(len(classes),)``, mean over the cases).
    """

    def score(r: Sequence[int]) -> np.ndarray:
        per_case = []
        for pred, ref in zip(preds, refs, strict=True):
            post, _ = keep_largest(pred, r)
            per_case.append([dice(post, ref, c) for c in classes])
        return np.mean(np.array(per_case, dtype=np.float64), axis=0)

    kept: tuple[int, ...] = ()
    best = score(kept)
    for entry in rule:
        trial = (*kept, entry)
        got = score(trial)
        if float(got.mean()) >= float(best.mean()) - 1e-9:
            kept, best = trial, got
    return kept, best


def new_stray_pieces(
    label: np.ndarray,
    before: np.ndarray,
    rule: Sequence[int],
    open_faces: Sequence[tuple[bool, bool]],
    outside: Callable[[int], int],
    keep_points: Mapping[int, Sequence[Sequence[int]]],
) -> np.ndarray | None:
    """The pieces an interactive step created that the rule would have removed, in the step's box.

    A click's network pass re-predicts a whole patch and, with a weak model, adds blobs elsewhere
    in it. For the structures of ``rule`` a piece is dropped when it is new (no voxel of the
    structure there ``before``), lies wholly inside the box (it touches no face in ``open_faces``:
    beyond those faces the volume goes on, so the piece may continue outside), holds none of
    ``keep_points`` (positive clicks: the user asked for them) and is not the larger part of the
    structure (``outside``: its voxels outside the box). Anything older -- the automatic result, a
    brush edit, an earlier click's piece -- stays.

    Args:
        label: the step's new label in its box ``(x, y, z)``.
        before: the label there before the step.
        rule: as for `keep_largest`.
        open_faces: per axis, whether the box's low / high face is inside the volume.
        outside: the voxels of a structure (class value, `FOREGROUND`) outside the box; called only
            when a candidate piece is at least half of the structure inside the box.
        keep_points: positive clicks in box coordinates, by class value (`FOREGROUND`: all of them).
    Returns:
        a boolean map of the box (voxels to set to background), or None.
    """
    drop: np.ndarray | None = None
    for v in rule:
        mask = label != 0 if v == FOREGROUND else label == v
        if not mask.any():
            continue
        comps, n = ndimage.label(mask, structure=_FULL)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        old = before != 0 if v == FOREGROUND else before == v
        keep = np.zeros(n + 1, dtype=bool)
        keep[0] = True
        keep[np.unique(comps[old])] = True  # overlaps what was there: not new
        for ax, (lo_open, hi_open) in enumerate(open_faces):
            if lo_open:
                keep[np.unique(np.take(comps, 0, axis=ax))] = True
            if hi_open:
                keep[np.unique(np.take(comps, -1, axis=ax))] = True
        for pt in keep_points.get(v, ()):
            keep[comps[tuple(int(c) for c in pt)]] = True
        if keep.all():
            continue
        inside = int(sizes[1:].sum())
        if (2 * sizes[~keep] >= inside).any():  # the larger part of the structure stays
            keep |= 2 * sizes >= inside + int(outside(v))
        if keep.all():
            continue
        piece = ~keep[comps]
        drop = piece if drop is None else drop | piece
    return drop


def check_rule(rule: object, values: Sequence[int]) -> tuple[int, ...]:
    """A configured rule as a tuple; ValueError unless it lists 0 (the foreground) or class values."""
    if not isinstance(rule, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in rule):
        raise ValueError(f"keep_largest must be 'auto' or a list of class values (0: the foreground), got {rule!r}")
    unknown = sorted(set(rule) - {FOREGROUND, *values})
    if unknown:
        raise ValueError(f"keep_largest lists {unknown}, which are not classes of the model ({sorted(values)})")
    return tuple(dict.fromkeys(int(v) for v in rule))


def structure_name(value: int, names: Mapping[int, str] | None = None) -> str:
    """How a rule's entry reads: ``foreground`` for 0, else the class's name (``class V`` unnamed)."""
    if value == FOREGROUND:
        return "foreground"
    return (names or {}).get(int(value)) or f"class {value}"
