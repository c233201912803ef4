"""Prompts beyond single clicks — boxes, lassos, scribbles — as voxel masks and clicks (numpy only).

The shared model is trained on click guidance only, so every prompt is turned into what it
understands, plus a hard constraint the prompt states itself:

- **Box** (`Box`): two opposite corners (inclusive voxel indices). A *3D box* says "the structure
  is inside"; a *2D box* (one axis flat: both corners on the same slice) says so for that slice.
  Constraint (`box_constraints`): the class is removed outside the box (2D: outside the
  rectangle on its slice), now and after every later click of the session. Clicks
  (`box_clicks`): a positive click at the box's centre only when the current mask has nothing
  of the class in the box's central half. (Measured on Task04, 2026-12-05: a positive click on a
  structure the model already has, and background clicks just outside the box's faces — which
  land on the neighbouring class as often as on the background, since a box says where its class
  is not, not what is there — each lowered Dice below the constraint alone.)
- **Lasso** (`Lasso`): a closed polygon of voxel points on one slice (they share one index).
  Its inside on that slice (`lasso_mask`) becomes the class exactly (the constraint, kept after
  later clicks: `lasso_constraints`); clicks
  (`lasso_clicks`): positive ones inside — the interior point and points spread over the inside —
  and negative ones on a ring just outside, so the model grows the 2D outline into 3D.
- **Scribbles** (`Stroke`): polylines of voxel points with a class (0: background), optionally
  thick (a ball of ``radius`` voxels along the line). `rasterize_strokes` gives their voxels;
  `stroke_clicks` sub-samples each stroke into clicks at least ``spacing`` voxels apart (model
  guidance, like clicks), `segloop.ml.graphcut` uses the voxels as seeds of a min-cut.

Where a constraint removes a class from voxels, they take the most probable other class of the
current probabilities (`reassign`), not blindly the background.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segloop.ml.clicks import Click, _class_value, check_point
from segloop.store.records import LabelSchema

MAX_STROKE_POINTS = 10_000
MAX_LASSO_POINTS = 10_000


@dataclass(frozen=True)
class Box:
    """A box prompt: class ``value``, corners ``lo`` <= ``hi`` (inclusive voxel indices)."""

    value: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def flat_axis(self) -> int | None:
        """The axis a 2D box lies across (its slice's normal), None for a 3D box."""
        flat = [a for a in range(3) if self.lo[a] == self.hi[a]]
        return flat[0] if len(flat) == 1 else None

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.lo[0], self.hi[0] + 1), slice(self.lo[1], self.hi[1] + 1), slice(self.lo[2], self.hi[2] + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.value, "box": [list(self.lo), list(self.hi)]}


@dataclass(frozen=True)
class Lasso:
    """A closed contour on one slice: class ``value``, ``axis`` (the slice's normal), ``index``
    (the slice), ``points`` (the vertices, voxel indices; the last joins the first)."""

    value: int
    axis: int
    index: int
    points: tuple[tuple[int, int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.value, "lasso": [list(p) for p in self.points]}


@dataclass(frozen=True)
class Stroke:
    """A scribble: class ``value`` (0: background), a polyline of voxel ``points``, ``radius`` in voxels."""

    value: int
    points: tuple[tuple[int, int, int], ...]
    radius: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.value, "points": [list(p) for p in self.points], "radius": self.radius}


@dataclass(frozen=True)
class Constraint:
    """Where a prompt said class ``value`` is not, kept by the session so that later clicks,
    whose network pass knows nothing of boxes and lassos, do not bring the class back there.

    ``outside=True``: everywhere except inside ``region`` (a 3D box). Otherwise: the voxels of
    ``mask`` (shaped like ``region``; None: all of it) inside ``region``.
    """

    value: int
    region: tuple[slice, slice, slice]
    mask: np.ndarray | None = None
    outside: bool = False

    def within(self, box: Sequence[slice]) -> np.ndarray:
        """Boolean array shaped like the window ``box`` (slices with start and stop): True where
        the class is not allowed."""
        shape = tuple(int(b.stop) - int(b.start) for b in box)
        out = np.full(shape, self.outside, dtype=bool)
        lo = [max(int(r.start), int(b.start)) for r, b in zip(self.region, box, strict=True)]
        hi = [min(int(r.stop), int(b.stop)) for r, b in zip(self.region, box, strict=True)]
        if any(a >= z for a, z in zip(lo, hi, strict=True)):
            return out
        rel = tuple(slice(a - int(b.start), z - int(b.start)) for a, z, b in zip(lo, hi, box, strict=True))
        if self.outside:
            out[rel] = False
        elif self.mask is None:
            out[rel] = True
        else:
            src = tuple(slice(a - int(r.start), z - int(r.start)) for a, z, r in zip(lo, hi, self.region, strict=True))
            out[rel] = self.mask[src]
        return out


def apply_constraints(probs: np.ndarray, constraints: Sequence[Constraint], box: Sequence[slice],
                      class_values: Sequence[int]) -> np.ndarray:
    """``probs`` ``(C, ...)`` of the window ``box`` with each constrained class's probability moved
    to the other classes where it is not allowed (renormalised; all to the background where
    nothing else is left). Changes ``probs`` in place and returns it."""
    values = list(class_values)
    for con in constraints:
        forbidden = con.within(box)
        if not forbidden.any():
            continue
        p = probs[:, forbidden]
        p[values.index(con.value)] = 0.0
        total = p.sum(axis=0)
        empty = total <= 0
        if empty.any():
            p[values.index(0) if 0 in values else 0, empty] = 1.0
            total = np.where(empty, 1.0, total)
        probs[:, forbidden] = p / total
    return probs


def box_constraints(box: Box, shape: Sequence[int]) -> tuple[Constraint, ...]:
    """A 3D box: its class is nowhere outside it; a 2D box: nowhere outside its rectangle on its slice."""
    flat = box.flat_axis
    if flat is None:
        return (Constraint(box.value, box.slices, None, outside=True),)
    region = list(box.slices)
    for a in range(3):
        if a != flat:
            region[a] = slice(0, int(shape[a]))
    inside = np.zeros([r.stop - r.start for r in region], dtype=bool)
    inside[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box.slices, region, strict=True))] = True
    return (Constraint(box.value, (region[0], region[1], region[2]), ~inside),)


def lasso_constraints(lasso: Lasso, shape: Sequence[int], class_values: Sequence[int]) -> tuple[Constraint, ...]:
    """On the lasso's slice its class is only inside the contour, and every other class is not inside it."""
    inside = np.expand_dims(lasso_mask(lasso, shape), lasso.axis)
    region = [slice(0, int(s)) for s in shape]
    region[lasso.axis] = slice(lasso.index, lasso.index + 1)
    r = (region[0], region[1], region[2])
    return (Constraint(lasso.value, r, ~inside),
            *(Constraint(int(v), r, inside) for v in class_values if int(v) != lasso.value))


# --- parsing -------------------------------------------------------------------------------------


def _allowed(schema: LabelSchema | None, values: Iterable[int] | None) -> set[int]:
    allowed = set(values) if values is not None else (set(schema.values) if schema is not None else {0})
    allowed.add(0)
    return allowed


def _points(raw: Any, shape: Sequence[int], what: str, limit: int, minimum: int) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(raw, (list, tuple)) or len(raw) < minimum:
        raise ValueError(f"{what} needs a list of at least {minimum} [i, j, k] points")
    if len(raw) > limit:
        raise ValueError(f"{what} has {len(raw)} points, at most {limit} are accepted")
    return tuple(check_point(p, shape) for p in raw)


def parse_box(spec: Any, schema: LabelSchema | None, shape: Sequence[int], *, values: Iterable[int] | None = None) -> Box:
    """``{"class": name | value, "box": [[i0, j0, k0], [i1, j1, k1]]}`` (opposite corners, any order).

    Raises:
        ValueError: an unknown or background class, a corner outside ``shape``, or a box flat
            on more than one axis (a line or a point is no box).
    """
    if not isinstance(spec, dict) or "class" not in spec or "box" not in spec:
        raise ValueError('a box is an object {"class": ..., "box": [[i0, j0, k0], [i1, j1, k1]]}')
    value = _class_value(spec["class"], schema, _allowed(schema, values))
    if value == 0:
        raise ValueError("a box marks a structure: give a foreground class, not background")
    corners = spec["box"]
    if not isinstance(corners, (list, tuple)) or len(corners) != 2:
        raise ValueError('"box" must be two opposite corners [[i0, j0, k0], [i1, j1, k1]]')
    a, b = (check_point(c, shape) for c in corners)
    lo = (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]))
    hi = (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))
    flat = sum(1 for ax in range(3) if lo[ax] == hi[ax])
    if flat > 1:
        raise ValueError(f"box {list(lo)}..{list(hi)} is flat on {flat} axes: a box spans a rectangle on a slice or a volume")
    return Box(value, lo, hi)


def parse_lasso(spec: Any, schema: LabelSchema | None, shape: Sequence[int], *, values: Iterable[int] | None = None) -> Lasso:
    """``{"class": name | value, "lasso": [[i, j, k], ...]}``: at least 3 vertices on one slice.

    Raises:
        ValueError: an unknown or background class, a point outside ``shape``, points not on one
            slice, or a contour enclosing no voxel.
    """
    if not isinstance(spec, dict) or "class" not in spec or "lasso" not in spec:
        raise ValueError('a lasso is an object {"class": ..., "lasso": [[i, j, k], ...]}')
    value = _class_value(spec["class"], schema, _allowed(schema, values))
    if value == 0:
        raise ValueError("a lasso outlines a structure: give a foreground class, not background")
    pts = _points(spec["lasso"], shape, "a lasso", MAX_LASSO_POINTS, 3)
    arr = np.asarray(pts)
    flat = [ax for ax in range(3) if np.all(arr[:, ax] == arr[0, ax])]
    if not flat:
        raise ValueError("the lasso's points must lie on one slice (share one of i, j, k)")
    # several flat axes: a degenerate (line) contour, refused by the area check below
    lasso = Lasso(value, flat[0], int(arr[0, flat[0]]), pts)
    if not lasso_mask(lasso, shape).any():
        raise ValueError("the lasso encloses no voxel (draw a closed contour around the structure)")
    return lasso


def parse_strokes(
    spec: Any, schema: LabelSchema | None, shape: Sequence[int], *, values: Iterable[int] | None = None
) -> list[Stroke]:
    """``[{"class": name | value | "background", "points": [[i, j, k], ...], "radius": 0}, ...]``.

    Raises:
        ValueError: naming the unknown class, the point outside ``shape`` or the malformed entry.
    """
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError('scribbles are a non-empty list of {"class": ..., "points": [[i, j, k], ...]} strokes')
    allowed = _allowed(schema, values)
    out = []
    for n, s in enumerate(spec):
        if not isinstance(s, dict) or "class" not in s or "points" not in s:
            raise ValueError(f'stroke {n}: expected an object with "class" and "points"')
        value = _class_value(s["class"], schema, allowed)
        pts = _points(s["points"], shape, f"stroke {n}", MAX_STROKE_POINTS, 1)
        radius = s.get("radius", 0)
        if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= 10:
            raise ValueError(f"stroke {n}: radius must be an integer from 0 to 10 voxels")
        out.append(Stroke(value, pts, radius))
    return out


# --- rasterising ---------------------------------------------------------------------------------


def _segment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = int(np.ceil(np.abs(b - a).max())) + 1
    return np.rint(np.linspace(a, b, n)).astype(np.int64)


def stroke_voxels(stroke: Stroke) -> np.ndarray:
    """The voxels of the polyline through ``stroke.points`` (no thickness), ``(N, 3)`` in order."""
    pts = np.asarray(stroke.points, dtype=np.float64)
    if len(pts) == 1:
        return pts.astype(np.int64)
    parts = [_segment(pts[i], pts[i + 1])[: -1 if i + 2 < len(pts) else None] for i in range(len(pts) - 1)]
    return np.concatenate(parts)


def rasterize_strokes(strokes: Sequence[Stroke], shape: Sequence[int]) -> dict[int, np.ndarray]:
    """Class value -> boolean mask of its strokes' voxels (thickened by each stroke's radius).
    A voxel scribbled with two classes keeps the later stroke's class."""
    shape3 = tuple(int(s) for s in shape)
    owner = np.full(shape3, -1, dtype=np.int32)
    for s in strokes:
        line = np.zeros(shape3, dtype=bool)
        v = stroke_voxels(s)
        line[v[:, 0], v[:, 1], v[:, 2]] = True
        if s.radius > 0:
            r = s.radius
            g = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
            ball = sum(x * x for x in g) <= r * r
            line = ndimage.binary_dilation(line, structure=ball)
        owner[line] = s.value
    return {int(v): owner == v for v in np.unique(owner) if v >= 0}


def stroke_clicks(strokes: Sequence[Stroke], spacing: float = 6.0, per_stroke: int = 12) -> list[Click]:
    """Clicks along each stroke: its first voxel, then every voxel at least ``spacing`` voxels
    (along the line) past the previous one, at most ``per_stroke`` per stroke, evenly thinned."""
    out: list[Click] = []
    for s in strokes:
        vox = stroke_voxels(s)
        step = np.r_[0.0, np.linalg.norm(np.diff(vox, axis=0), axis=1)]
        along = np.cumsum(step)
        picked = [0]
        for i in range(1, len(vox)):
            if along[i] - along[picked[-1]] >= spacing:
                picked.append(i)
        if len(picked) > per_stroke:
            picked = [picked[int(round(t))] for t in np.linspace(0, len(picked) - 1, per_stroke)]
        seen: set[tuple[int, int, int]] = set()
        for i in picked:
            p = (int(vox[i][0]), int(vox[i][1]), int(vox[i][2]))
            if p not in seen:
                seen.add(p)
                out.append(Click(s.value, p))
    return out


def _plane(axis: int) -> tuple[int, int]:
    a, b = [x for x in range(3) if x != axis]
    return a, b


def lasso_mask(lasso: Lasso, shape: Sequence[int]) -> np.ndarray:
    """The voxels of ``lasso``'s slice inside its contour (the contour's own voxels included),
    as a 2D boolean mask of that slice (axes in order, the slice's normal left out)."""
    from matplotlib.path import Path as PolyPath

    a, b = _plane(lasso.axis)
    pts = np.asarray(lasso.points, dtype=np.float64)[:, [a, b]]
    size = (int(shape[a]), int(shape[b]))
    lo = np.clip(np.floor(pts.min(axis=0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + 1, size)
    ii, jj = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    closed = np.vstack([pts, pts[:1]])  # closed=True takes the last vertex as the closing code only
    inside = PolyPath(closed, closed=True).contains_points(np.c_[ii.ravel(), jj.ravel()])
    out = np.zeros(size, dtype=bool)
    out[lo[0] : hi[0], lo[1] : hi[1]] = inside.reshape(ii.shape)
    for p, q in zip(closed[:-1], closed[1:], strict=True):
        seg = _segment(p, q)
        out[seg[:, 0], seg[:, 1]] = True
    return out


def _slice_index(axis: int, index: int) -> tuple[Any, Any, Any]:
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = index
    return (sl[0], sl[1], sl[2])


def _point3(axis: int, index: int, ij: Any) -> tuple[int, int, int]:
    p = [0, 0, 0]
    a, b = _plane(axis)
    p[axis], p[a], p[b] = int(index), int(ij[0]), int(ij[1])
    return (p[0], p[1], p[2])


def _interior(mask: np.ndarray) -> np.ndarray:
    """Index of the voxel of ``mask`` farthest from its border (first such in C order)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))
    inner = dist[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return np.array(np.unravel_index(int(np.argmax(inner)), mask.shape))


def _spread(mask: np.ndarray, n: int, exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to ``n`` voxels of ``mask`` spread out by farthest-point sampling (from ``exclude``)."""
    pts = np.argwhere(mask)
    if len(pts) == 0 or n <= 0:
        return []
    if exclude is None:
        chosen = [pts[0]]
        d = np.linalg.norm(pts - pts[0], axis=1)
    else:
        d = np.linalg.norm(pts - exclude, axis=1)
        chosen = []
    while len(chosen) < n and d.max() > 0:
        i = int(np.argmax(d))
        chosen.append(pts[i])
        d = np.minimum(d, np.linalg.norm(pts - pts[i], axis=1))
    return chosen


def lasso_clicks(lasso: Lasso, shape: Sequence[int], inside: int = 4, outside: int = 8) -> list[Click]:
    """Clicks of a lasso: the interior point and up to ``inside`` - 1 more spread over the
    contour's inside (positive), and up to ``outside`` on a ring 2-3 voxels outside it (background)."""
    region = lasso_mask(lasso, shape)
    centre = _interior(region)
    # spread points from the eroded inside, so they do not sit on the outline
    core = ndimage.binary_erosion(region, iterations=2)
    pos = [centre, *_spread(core if core.any() else region, inside - 1, exclude=centre)]
    ring = ndimage.binary_dilation(region, iterations=3) & ~ndimage.binary_dilation(region, iterations=1)
    neg = _spread(ring, outside)
    out = [Click(lasso.value, _point3(lasso.axis, lasso.index, p)) for p in pos]
    out += [Click(0, _point3(lasso.axis, lasso.index, p)) for p in neg]
    return list(dict.fromkeys(out))


def box_clicks(box: Box, label: np.ndarray) -> list[Click]:
    """The click of ``box`` (see the module docstring): one positive click at the box's centre
    when ``label`` has nothing of the box's class in the box's central half, else none."""
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    q = (hi - lo) // 4
    clo, chi = lo + q, hi - q
    central = label[clo[0] : chi[0] + 1, clo[1] : chi[1] + 1, clo[2] : chi[2] + 1] == box.value
    if central.any():
        return []
    mid = (lo + hi) // 2
    return [Click(box.value, (int(mid[0]), int(mid[1]), int(mid[2])))]


def box_outside(box: Box, shape: Sequence[int]) -> np.ndarray:
    """Where ``box`` says its class is not: outside the box (2D box: outside its rectangle, on its slice only)."""
    shape3 = tuple(int(s) for s in shape)
    inside = np.zeros(shape3, dtype=bool)
    inside[box.slices] = True
    flat = box.flat_axis
    if flat is None:
        return ~inside
    out = np.zeros(shape3, dtype=bool)
    sl = _slice_index(flat, box.lo[flat])
    out[sl] = ~inside[sl]
    return out


def lasso_constraint(lasso: Lasso, shape: Sequence[int]) -> tuple[tuple[Any, Any, Any], np.ndarray]:
    """``(slice index, inside)``: the lasso's slice of the volume and its inside (2D mask)."""
    return _slice_index(lasso.axis, lasso.index), lasso_mask(lasso, shape)


def reassign(
    label: np.ndarray, probs: np.ndarray, class_values: Sequence[int], value: int, where: np.ndarray
) -> np.ndarray:
    """A copy of ``label`` where voxels of ``where`` holding ``value`` take the most probable
    other class of ``probs`` (``(C, X, Y, Z)``, channel n = ``class_values[n]``)."""
    out = label.copy()
    hit = where & (label == value)
    if not hit.any():
        return out
    ch = list(class_values).index(value)
    p = probs[:, hit].copy()
    p[ch] = -1.0
    lut = np.asarray(class_values, dtype=label.dtype)
    out[hit] = lut[p.argmax(axis=0)]
    return out
