"""Virtual user's prompts beyond clicks: a box, a lasso and scribbles drawn from the reference
(numpy/scipy; contours with contourpy, which matplotlib brings).

What a careful annotator would draw, made from the reference mask ``(X, Y, Z)``:

- `reference_box`: a 3D box around the class (its bounding box grown by ``margin`` voxels, as a
  person's drag is rarely tight), or with ``axis`` a 2D box on the slice (normal ``axis``) where
  the class is largest.
- `reference_lasso`: on the slice (normal ``axis``, default the last: axial for RAS volumes)
  where the class is largest, the outline of its largest connected piece, as the vertices of a
  closed polygon on the piece's own border voxels (`segloop.ml.prompts.lasso_mask` fills it back
  to the piece, holes aside).
- `error_scribbles`: one stroke along the middle of the largest error region of a class (the
  same regions as `segloop.ml.virtual_user`: a missed part of the class is a stroke of the class,
  a false positive a stroke of what the reference holds there), on the slice where that region is
  widest; the stroke follows the region's core (voxels at least half the region's largest
  inner distance from its border), ordered along its main direction and cut where a straight
  segment would leave the region.

All return ``None`` / ``[]`` when there is nothing to draw (the class is absent, no error).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from segloop.ml.prompts import Box, Lasso, Stroke, _segment
from segloop.ml.virtual_user import error_regions

_FULL = ndimage.generate_binary_structure(3, 3)


def _widest_slice(mask: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice holding the most voxels of ``mask`` (first of ties)."""
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax(mask.sum(axis=other)))


def _take(mask: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(mask, index, axis=axis)


def _to3(axis: int, index: int, ij: Sequence[int]) -> tuple[int, int, int]:
    p = [0, 0, 0]
    a, b = (x for x in range(3) if x != axis)
    p[axis], p[a], p[b] = int(index), int(ij[0]), int(ij[1])
    return (p[0], p[1], p[2])


def _largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def reference_box(reference: np.ndarray, value: int, margin: int = 1, axis: int | None = None) -> Box | None:
    """A box prompt of class ``value`` around it in ``reference`` (3D, or 2D on the slice of normal
    ``axis`` where the class is largest); ``None`` if the class is absent."""
    ref = np.asarray(reference)
    mask = ref == value
    if not mask.any():
        return None
    if axis is not None:
        index = _widest_slice(mask, axis)
        sl: list[slice | int] = [slice(None)] * 3
        sl[axis] = index
        only = np.zeros_like(mask)
        only[tuple(sl)] = mask[tuple(sl)]
        mask = only
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin, np.asarray(ref.shape) - 1)
    if axis is not None:
        lo[axis] = hi[axis] = index
    return Box(int(value), (int(lo[0]), int(lo[1]), int(lo[2])), (int(hi[0]), int(hi[1]), int(hi[2])))


def _outline(piece: np.ndarray) -> list[tuple[int, int]]:
    """Vertices of the closed outline of a 2D mask, on its own border pixels, in order."""
    import contourpy

    z = np.pad(piece.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=z).lines(0.5)
    if not lines:
        return []
    line = np.asarray(max(lines, key=lambda a: len(np.asarray(a))))  # the outer outline is the longest
    out: list[tuple[int, int]] = []
    h, w = piece.shape
    for y, x in line:  # contourpy gives (x, y) = (column, row) of the padded array
        row, col = x - 1.0, y - 1.0
        # the vertex lies between an inside and an outside pixel: take the inside one
        cands = {(int(np.floor(row)), int(np.floor(col))), (int(np.ceil(row)), int(np.ceil(col))),
                 (int(np.floor(row)), int(np.ceil(col))), (int(np.ceil(row)), int(np.floor(col)))}
        inside = sorted((abs(r - row) + abs(c - col), r, c) for r, c in cands if 0 <= r < h and 0 <= c < w and piece[r, c])
        if inside:
            p = (inside[0][1], inside[0][2])
            if not out or out[-1] != p:
                out.append(p)
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return out


def reference_lasso(reference: np.ndarray, value: int, axis: int = 2) -> Lasso | None:
    """A lasso of class ``value``: the outline of its largest piece on its widest slice (normal
    ``axis``); ``None`` if the class is absent or the piece has fewer than 3 outline points."""
    ref = np.asarray(reference)
    mask = ref == value
    if not mask.any():
        return None
    index = _widest_slice(mask, axis)
    piece = _largest_component(_take(mask, axis, index))
    pts = _outline(piece)
    if len(pts) < 3:
        return None
    return Lasso(int(value), axis, index, tuple(_to3(axis, index, p) for p in pts))


def _core_polyline(region: np.ndarray) -> list[list[tuple[int, int]]]:
    """Polylines through the core of a 2D region, ordered along its main direction, cut where a
    segment leaves the region (each at least one point)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    core = dist >= max(1.0, 0.5 * float(dist.max()))
    pts = np.argwhere(core).astype(np.float64)
    if len(pts) == 0:
        return []
    centred = pts - pts.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0] if len(pts) > 1 else np.array([1.0, 0.0])
    t = centred @ direction
    order = np.argsort(t, kind="stable")
    # one point per unit of the main direction: the core voxel nearest the core's middle line
    chosen: list[tuple[int, int]] = []
    bins = np.round(t[order]).astype(int)
    for b in np.unique(bins):
        members = order[bins == b]
        normal = np.abs(centred[members] @ np.array([-direction[1], direction[0]]))
        p = pts[members[int(np.argmin(normal))]]
        chosen.append((int(p[0]), int(p[1])))
    lines: list[list[tuple[int, int]]] = [[chosen[0]]]
    for p in chosen[1:]:
        seg = _segment(np.asarray(lines[-1][-1], dtype=np.float64), np.asarray(p, dtype=np.float64))
        if region[seg[:, 0], seg[:, 1]].all():
            lines[-1].append(p)
        else:
            lines.append([p])
    return lines


def error_scribbles(
    prediction: np.ndarray, reference: np.ndarray, value: int, axis: int = 2, min_points: int = 2
) -> list[Stroke]:
    """Strokes correcting the largest error region of class ``value`` (see the module docstring):
    the longest piece of the region's core line on its widest slice, plus any other piece of at
    least ``min_points`` points; ``[]`` when the class has no error."""
    best: tuple[int, int, np.ndarray] | None = None
    for click_value, mask in error_regions(prediction, reference, [value]):
        comp = _largest_component(mask, _FULL)
        size = int(comp.sum())
        if best is None or size > best[0]:
            best = (size, click_value, comp)
    if best is None:
        return []
    _, click_value, comp = best
    index = _widest_slice(comp, axis)
    region = _largest_component(_take(comp, axis, index))
    lines = _core_polyline(region)
    if not lines:
        return []
    longest = max(lines, key=len)
    keep = [line for line in lines if line is longest or len(line) >= min_points]
    return [Stroke(int(click_value), tuple(_to3(axis, index, p) for p in line)) for line in keep]
