"""`InteractiveSession`: click-by-click (and prompt) refinement of one image with a `Predictor`.

- The image is pre-processed once (normalised, resampled to the model grid) and cached; each
  `add_clicks` runs the network only on a region of interest (ROI) around the new clicks (at least
  one model patch, centred on them), with the guidance of *all* clicks so far, and merges the
  result into the current probabilities with a weight that is 1 inside the ROI and tapers linearly
  to 0 over its outer eighth (sides touching the volume edge do not taper), so the mask stays
  smooth at the ROI border. The clicked voxels themselves always take the clicked class (a click is
  never ignored). Models trained with ``mask_input`` also see the current mask in the ROI, so they
  learn to correct it locally rather than re-segment from scratch; models trained with
  ``box_input`` see the session's 3D boxes in their box channels (`refine_region` runs the network
  on a new box's region).
- `InteractiveSession.set_label` puts an edited mask (e.g. brush strokes) into the session: the
  voxels whose class changed take probability 1 for their new class, the others keep theirs, and
  the next click refines on top of it. The clicks made before are part of that mask and stop
  steering the network (their voxels are no longer forced). Every click and upload is one step
  of the session's history: `undo` and `redo` walk it; a new click or upload clears what could
  be redone.
- Boxes, lassos and scribbles are steps too (`segloop.ml.prompt_session`).
- The session starts from the automatic result, post-processed by the model's ``keep_largest``
  rule (`segloop.ml.postprocess`); a step's pass drops the *new* pieces of those structures that
  lie wholly in its region, hold no positive click and are the smaller part (blobs a click's pass
  adds elsewhere in its patch); what was there before, brushed or clicked, stays.
- A session's steps do not copy the probabilities (C x 4 bytes a voxel: 100 MB for three classes on
  256x256x128, ~30 ms to copy, more than the click's own compute): each step's `Prediction` gets
  them on first access, rebuilt from the session's current array and the boxes that later steps
  changed (the same box copies undo keeps), so it still holds that step's values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click, validate_clicks
from segloop.ml.guidance import encode_boxes, encode_guidance
from segloop.ml.postprocess import FOREGROUND, new_stray_pieces
from segloop.ml.predictor import Prediction
from segloop.ml.preprocess import resample
from segloop.ml.prompts import Constraint, apply_constraints

if TYPE_CHECKING:
    from segloop.ml.predictor import Predictor


# (clicks, box, probabilities and labels in the box, prompt constraints) before/after a step
_Step = tuple[list[Click], tuple[slice, ...], np.ndarray, np.ndarray, tuple[Constraint, ...]]


class _ProbsState:
    """The probabilities of one state of a session, without a copy.

    While the state is the session's current one (``newer`` None) they are the session's array.
    When a step changes ``box``, the state is retired: ``old`` keeps its values in the box (the
    copy the step takes for undo anyway) and ``newer`` links the state that follows, so its
    probabilities are the newer state's with ``old`` put back in ``box``.

    It holds the session's probability array and lock, not the session: a session and its
    predictions would otherwise form a reference cycle, and a closed session (its prepared image,
    probabilities and undo history: hundreds of MB on a large volume) would wait for Python's
    cyclic garbage collector instead of going when its last reference does.
    """

    __slots__ = ("probs", "lock", "newer", "box", "old", "array")

    def __init__(self, probs: np.ndarray, lock: threading.Lock) -> None:
        self.probs = probs  # the session's array, changed in place (never replaced)
        self.lock = lock
        self.newer: _ProbsState | None = None
        self.box: tuple[slice, ...] = ()
        self.old: np.ndarray | None = None
        self.array: np.ndarray | None = None  # materialised

    def materialize(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        with self.lock:
            chain: list[_ProbsState] = []
            node: _ProbsState = self
            while node.newer is not None and node.array is None:
                chain.append(node)
                node = node.newer
            out = (node.array if node.array is not None else node.probs).copy()
        for older in reversed(chain):  # newest change first
            assert older.old is not None
            out[(slice(None), *older.box)] = older.old
        self.array = out
        return out


class _SessionPrediction(Prediction):
    """A `Prediction` of a session step whose probabilities are materialised on first access."""

    @property
    def probabilities(self) -> np.ndarray:
        state = self.__dict__.get("_state")
        if state is not None:
            self.__dict__["_probabilities"] = state.materialize()
            self.__dict__["_state"] = None
        out: np.ndarray = self.__dict__["_probabilities"]
        return out

    @probabilities.setter
    def probabilities(self, value: np.ndarray | _ProbsState) -> None:
        if isinstance(value, _ProbsState):
            self.__dict__["_state"] = value
        else:
            self.__dict__["_state"] = None
            self.__dict__["_probabilities"] = value


def _clip_box(box: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` as slices with explicit bounds inside ``shape``."""
    if len(box) != len(shape):
        raise ValueError(f"box {box} does not have {len(shape)} axes")
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape, strict=True))


def _values_in(array: np.ndarray) -> list[int]:
    """The distinct values of an integer label array (a histogram for small integer types:
    ``np.unique`` sorts, ~0.3 s for 8 M voxels)."""
    a = np.asarray(array)
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2 and a.size:
        flat = a.ravel()
        if a.dtype.kind == "i":
            lo = int(flat.min())
            if lo < 0:
                return [int(v) for v in np.unique(flat)]
        return [int(v) for v in np.flatnonzero(np.bincount(flat))]
    return [int(v) for v in np.unique(a)]


def _taper(size: int, lo_edge: bool, hi_edge: bool) -> np.ndarray:
    w = np.ones(size, dtype=np.float32)
    t = max(1, size // 8)
    ramp = (np.arange(t, dtype=np.float32) + 1) / (t + 1)
    if not lo_edge and size > 2 * t:
        w[:t] = ramp
    if not hi_edge and size > 2 * t:
        w[size - t :] = ramp[::-1]
    return w


class InteractiveSession:
    """Click-by-click refinement of one image (see the module docstring).

    Attributes:
        prediction: the latest `Prediction`.
        clicks: all clicks so far, in image voxel indices.
    """

    def __init__(self, predictor: Predictor, image: Volume, initial: Volume | None = None) -> None:
        self.predictor = predictor
        self.prepared = predictor.prepare(image)
        self.image = image
        spec = predictor.spec
        t0 = time.perf_counter()
        if initial is None:
            probs = predictor.to_image_grid(predictor.automatic_probabilities(self.prepared.data), self.prepared)
            self._probs = np.ascontiguousarray(probs, dtype=np.float32)
            predictor.postprocess(self._probs)  # the session starts from the automatic result
        else:
            lab = np.asarray(initial.array)
            if lab.shape != image.shape:
                raise ValueError(f"initial label shape {lab.shape} does not match image shape {image.shape}")
            unknown = sorted(set(np.unique(lab).tolist()) - set(spec.class_values))
            if unknown:
                raise ValueError(f"initial label has values {unknown} the model does not know ({spec.class_values})")
            self._probs = np.zeros((spec.num_classes, *image.shape), dtype=np.float32)
            for n, v in enumerate(spec.class_values):
                self._probs[n][lab == v] = 1.0
        self._label = predictor.labels_from(self._probs)
        self._probs_lock = threading.Lock()
        self._state = _ProbsState(self._probs, self._probs_lock)
        self._mask_step = 0
        self.clicks: list[Click] = []
        # where a prompt (box, lasso) said a class is not: every later click keeps to it
        self.constraints: tuple[Constraint, ...] = ()
        # steps: (clicks before/after the step, box, probabilities and labels in the box)
        self._history: list[_Step] = []
        self._redo: list[_Step] = []
        self.prediction = self._snapshot(t0)

    def _snapshot(self, t0: float, box: tuple[slice, ...] | None = None) -> Prediction:
        """The current state as a `Prediction`; ``t0``: when the step began (its ``seconds``);
        ``box``: where the step changed the mask (None: the session's first state)."""
        p = self.predictor
        previous = self._mask_step
        self._mask_step += 1
        label = Volume(self._label.copy(), self.image.affine.copy(), {"source": f"model:{p.model}@{p.version}"})
        return _SessionPrediction(
            label,
            self._state,  # type: ignore[arg-type]  # materialised on first access
            p.model,
            p.version,
            time.perf_counter() - t0,
            p.class_values,
            tuple(self.clicks),
            self._mask_step,
            None if box is None else (previous, box),
        )

    def _write_probs(self, box: tuple[slice, ...], old: np.ndarray, values: np.ndarray) -> None:
        """``self._probs[:, box] = values``; ``old``: the values there before (not changed later).
        Earlier steps' predictions keep theirs through ``old`` (see `_ProbsState`)."""
        with self._probs_lock:
            retired = self._state
            self._state = _ProbsState(self._probs, self._probs_lock)
            retired.newer, retired.box, retired.old = self._state, box, old
            self._probs[(slice(None), *box)] = values

    def _roi(self, points: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
        """Model-grid box ``[lo, hi)`` around ``points``: at least one patch, clipped to the volume."""
        shape = self.prepared.model_shape
        patch = self.predictor.spec.patch_size
        pts = np.asarray(points, dtype=np.float64)
        lo, hi = [], []
        for ax in range(3):
            n, dim = patch[ax], shape[ax]
            a = int(np.floor(pts[:, ax].min())) - n // 2
            b = int(np.ceil(pts[:, ax].max())) + (n - n // 2)  # one click: exactly one patch
            if b - a > dim:
                a, b = 0, dim
            elif a < 0:
                a, b = 0, min(dim, b - a)
            elif b > dim:
                a, b = max(0, a - (b - dim)), dim
            lo.append(a)
            hi.append(b)
        return lo, hi

    def add_clicks(self, clicks: Iterable[Click]) -> Prediction:
        """Add clicks (image voxel indices) and refine the mask around them.

        Raises:
            ValueError: a click outside the volume or of a class the model does not know.
        """
        t0 = time.perf_counter()
        p = self.predictor
        spec = p.spec
        p.require_interactive("clicks")
        new = validate_clicks(clicks, spec.class_values, self.image.shape)
        if not new:
            return self.prediction
        f = self.prepared.factors or (1.0, 1.0, 1.0)
        return self._network_step(t0, new, [[c.point[a] * f[a] for a in range(3)] for c in new])

    def refine_region(self, region: Sequence[slice]) -> Prediction:
        """Run the network again on ``region`` (image-grid slices, e.g. a new box prompt's box)
        with everything the session holds -- clicks, and the boxes of `box_input` models -- and
        merge it like a click's pass (no click is added); one undoable step."""
        t0 = time.perf_counter()
        self.predictor.require_interactive("prompts")
        f = self.prepared.factors or (1.0, 1.0, 1.0)
        r = _clip_box(region, self.image.shape)
        corners = [[r[a].start * f[a] for a in range(3)], [(r[a].stop - 1) * f[a] for a in range(3)]]
        return self._network_step(t0, [], corners)

    def _boxes(self) -> list[tuple[int, tuple[slice, ...]]]:
        """The 3D boxes of the session's prompts: the constraints that keep a class inside a region."""
        return [(c.value, c.region) for c in self.constraints if c.outside]

    def _network_step(self, t0: float, new: list[Click], points_m: Sequence[Sequence[float]]) -> Prediction:
        """One network pass on the ROI around ``points_m`` (model grid) with the clicks so far plus
        ``new``, merged into the mask (see the module docstring)."""
        p = self.predictor
        spec = p.spec
        f = self.prepared.factors or (1.0, 1.0, 1.0)
        lo_m, hi_m = self._roi(points_m)
        all_clicks = self.clicks + new
        roi_shape = [b - a for a, b in zip(lo_m, hi_m, strict=True)]
        parts = [encode_guidance(all_clicks, roi_shape, spec.class_values, spec.guidance_sigma, offset=lo_m, scale=f)]
        if spec.mask_input:
            parts.append(self._previous_mask(lo_m, hi_m))
        if spec.box_input:
            parts.append(encode_boxes(self._boxes(), roi_shape, spec.class_values, offset=lo_m, scale=f))
        extra = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        data = self.prepared.data[:, lo_m[0] : hi_m[0], lo_m[1] : hi_m[1], lo_m[2] : hi_m[2]]
        probs_m = p._probabilities(np.ascontiguousarray(data), extra)
        # Box on the image grid.
        shape = self.image.shape
        if self.prepared.factors is None:
            lo, hi, probs = lo_m, hi_m, probs_m
        else:
            lo = [max(0, int(np.floor(a / s))) for a, s in zip(lo_m, f, strict=True)]
            hi = [min(d, int(np.ceil(b / s))) for b, s, d in zip(hi_m, f, shape, strict=True)]
            probs = resample(probs_m, [b - a for a, b in zip(lo, hi, strict=True)], order=1)
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        w = np.ones(1, dtype=np.float32)
        for ax in range(3):
            t = _taper(hi[ax] - lo[ax], lo[ax] == 0, hi[ax] == shape[ax])
            w = w[..., None] * t if ax else t
        radius = p.merge_radius_mm
        if radius is not None and new:
            w = w * self._local_weight(new, lo, hi, radius)
        old_p = self._probs[(slice(None), *box)].copy()
        old_l = self._label[box].copy()
        self._history.append((list(self.clicks), box, old_p, old_l, self.constraints))
        self._redo.clear()
        merged = w * probs + (1.0 - w) * old_p
        if self.constraints:
            merged = apply_constraints(merged, self.constraints, box, spec.class_values)
        for c in all_clicks:
            rel = [c.point[a] - lo[a] for a in range(3)]
            if all(0 <= r < hi[a] - lo[a] for a, r in enumerate(rel)):
                merged[:, rel[0], rel[1], rel[2]] = 0.0
                merged[spec.class_values.index(c.value), rel[0], rel[1], rel[2]] = 1.0
        label = p.labels_from(merged)
        if spec.keep_largest:
            self._drop_new_strays(merged, label, old_l, lo, hi, all_clicks)
        self._write_probs(box, old_p, merged)
        self._label[box] = label
        self.clicks = all_clicks
        self.prediction = self._snapshot(t0, box)
        return self.prediction

    def _drop_new_strays(self, merged: np.ndarray, label: np.ndarray, before: np.ndarray, lo: Sequence[int],
                         hi: Sequence[int], clicks: Sequence[Click]) -> None:
        """Set to background (in ``merged`` and ``label``, the step's probabilities and labels in its box
        ``[lo, hi)``; ``before``: the labels there before) the new pieces the model's ``keep_largest``
        rule would remove (`segloop.ml.postprocess.new_stray_pieces`)."""
        spec = self.predictor.spec

        def outside(v: int) -> int:  # the structure's voxels outside the box (the whole label counted once)
            whole = np.count_nonzero(self._label) if v == FOREGROUND else np.count_nonzero(self._label == v)
            there = np.count_nonzero(before) if v == FOREGROUND else np.count_nonzero(before == v)
            return int(whole - there)

        points: dict[int, list[tuple[int, ...]]] = {}
        for c in clicks:
            rel = tuple(int(c.point[a]) - lo[a] for a in range(3))
            if c.value != 0 and all(0 <= r < hi[a] - lo[a] for a, r in enumerate(rel)):
                points.setdefault(c.value, []).append(rel)
                points.setdefault(FOREGROUND, []).append(rel)
        shape = self.image.shape
        faces = [(lo[a] > 0, hi[a] < shape[a]) for a in range(3)]
        drop = new_stray_pieces(label, before, spec.keep_largest, faces, outside, points)
        if drop is not None:
            background = np.zeros(merged.shape[0], dtype=merged.dtype)
            background[spec.class_values.index(0)] = 1
            merged[:, drop] = background[:, None]
            label[drop] = 0

    def _previous_mask(self, lo_m: Sequence[int], hi_m: Sequence[int]) -> np.ndarray:
        """One-hot current mask ``(C, ...)`` on the model-grid box ``[lo_m, hi_m)``."""
        f = self.prepared.factors
        if f is None:
            lab = self._label[lo_m[0] : hi_m[0], lo_m[1] : hi_m[1], lo_m[2] : hi_m[2]]
        else:
            shape = self.image.shape
            lo = [max(0, int(np.floor(a / s))) for a, s in zip(lo_m, f, strict=True)]
            hi = [max(a + 1, min(d, int(np.ceil(b / s)))) for a, b, s, d in zip(lo, hi_m, f, shape, strict=True)]
            box = self._label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            lab = resample(box, [b - a for a, b in zip(lo_m, hi_m, strict=True)], order=0)
        return np.stack([(lab == v) for v in self.predictor.spec.class_values]).astype(np.float32)

    def _local_weight(self, clicks: Sequence[Click], lo: Sequence[int], hi: Sequence[int], radius: float) -> np.ndarray:
        """1 within ``radius`` mm of a click, falling linearly to 0 at ``1.5 * radius``; shape of the box."""
        sp = self.image.spacing
        grids = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        w = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], dtype=np.float32)
        for c in clicks:
            d = np.sqrt(sum(((g - c.point[a]) * sp[a]) ** 2 for a, g in enumerate(grids)))
            np.maximum(w, np.clip((1.5 * radius - d) / (0.5 * radius), 0.0, 1.0).astype(np.float32), out=w)
        return w

    def _swap(self, step: _Step) -> _Step:
        """Put ``step``'s state into the session; return the state it replaced (same box)."""
        clicks, box, probs, label, constraints = step
        current: _Step = (list(self.clicks), box, self._probs[(slice(None), *box)].copy(), self._label[box].copy(),
                          self.constraints)
        self._write_probs(box, current[2], probs)
        self._label[box] = label
        self.clicks = list(clicks)
        self.constraints = constraints
        return current

    def undo(self) -> Prediction:
        """Take back the last step (clicks, a prompt or a `set_label`); no-op without one."""
        return self._move_step(self._history, self._redo)

    def redo(self) -> Prediction:
        """Re-apply the step the last `undo` took back; no-op when there is none (`redo_depth` 0)."""
        return self._move_step(self._redo, self._history)

    def _move_step(self, source: list[_Step], target: list[_Step]) -> Prediction:
        """Swap the last step of ``source`` into the session and keep what it replaced on ``target``."""
        t0 = time.perf_counter()
        if not source:
            return self.prediction
        step = self._swap(source.pop())
        target.append(step)
        self.prediction = self._snapshot(t0, step[1])
        return self.prediction

    @property
    def undo_depth(self) -> int:
        return len(self._history)

    @property
    def redo_depth(self) -> int:
        return len(self._redo)

    def set_label(self, label: Volume | np.ndarray, box: tuple[slice, ...] | None = None) -> Prediction:
        """Replace the current mask by ``label`` (class values on the image's grid), e.g. after
        brush strokes; one undoable step (a label equal to the current mask changes nothing).

        Voxels whose class changes take probability 1 for their new class; the others keep
        their probabilities. The clicks so far are part of the new mask: they stop steering the
        network and their voxels are no longer forced, and the prompts' constraints end too (the
        user's own edit wins; undo brings them back).

        ``box`` (slices of the image grid): the caller's promise that ``label`` differs from the
        current mask only inside it (a brush stroke's box) — only the box is checked and compared,
        so a stroke costs its box, not the volume.

        Raises:
            ValueError: another shape (or grid, for a `Volume`), or class values the model does not know.
        """
        t0 = time.perf_counter()
        if isinstance(label, Volume):
            self.image.check_same_grid(label, what="label", of="image")
        lab = np.asarray(label.array if isinstance(label, Volume) else label)
        if lab.ndim == 4 and lab.shape[3] == 1:
            lab = lab[..., 0]
        if lab.shape != self.image.shape:
            raise ValueError(f"label shape {lab.shape} does not match image shape {self.image.shape}")
        values = self.predictor.spec.class_values
        region = tuple(slice(0, n) for n in lab.shape) if box is None else _clip_box(box, lab.shape)
        unknown = sorted(set(_values_in(lab[region])) - set(values))
        if unknown:
            raise ValueError(f"label has values {unknown} the model does not know ({values})")
        changed_in = lab[region] != self._label[region]
        if not changed_in.any():
            return self.prediction
        nz = np.nonzero(changed_in)
        box = tuple(slice(r.start + int(a.min()), r.start + int(a.max()) + 1) for a, r in zip(nz, region, strict=True))
        old_p = self._probs[(slice(None), *box)].copy()
        self._history.append((list(self.clicks), box, old_p, self._label[box].copy(), self.constraints))
        self._redo.clear()
        sub = changed_in[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region, strict=True))]
        new = lab[box][sub].astype(self._label.dtype)
        probs = old_p.copy()
        for n, v in enumerate(values):
            channel = probs[n]
            channel[sub] = (new == v).astype(np.float32)
        self._write_probs(box, old_p, probs)
        self._label[box][sub] = new
        self.clicks = []
        self.constraints = ()
        self.prediction = self._snapshot(t0, box)
        return self.prediction

    # --- prompts beyond clicks (segloop.ml.prompt_session): each one undoable step ---------------

    def add_box(self, box: Any) -> Prediction:
        """A `segloop.ml.prompts.Box` (2D or 3D): the structure inside it; one undoable step."""
        from segloop.ml.prompt_session import add_box

        return add_box(self, box)

    def add_lasso(self, lasso: Any) -> Prediction:
        """A `segloop.ml.prompts.Lasso` (closed contour on one slice) grown into 3D; one undoable step."""
        from segloop.ml.prompt_session import add_lasso

        return add_lasso(self, lasso)

    def add_scribbles(self, strokes: Sequence[Any], mode: str = "guidance", params: Any = None) -> Prediction:
        """`segloop.ml.prompts.Stroke` s as model guidance (``mode="guidance"``) or as seeds of a
        graph-cut refinement of the current mask (``"graphcut"``); one undoable step."""
        from segloop.ml.prompt_session import add_scribbles

        return add_scribbles(self, strokes, mode, params)  # type: ignore[arg-type]

    def _squash_steps(self, depth: int, before: int) -> Prediction:
        """Merge the history steps past ``depth`` into one (a prompt made of several steps), so
        one undo takes it all back; ``before``: the mask step the first of them started from."""
        steps = self._history[depth:]
        if len(steps) > 1:
            del self._history[depth:]
            box = tuple(slice(min(s[1][a].start for s in steps), max(s[1][a].stop for s in steps)) for a in range(3))
            probs = self._probs[(slice(None), *box)].copy()
            label = self._label[box].copy()
            for _, b, old_p, old_l, _c in reversed(steps):
                rel = tuple(slice(s.start - u.start, s.stop - u.start) for s, u in zip(b, box, strict=True))
                probs[(slice(None), *rel)] = old_p
                label[rel] = old_l
            self._history.append((steps[0][0], box, probs, label, steps[0][4]))
            self.prediction.changed = (before, box)
        return self.prediction

    def info(self) -> dict[str, Any]:
        return {
            "clicks": [c.to_dict() for c in self.clicks],
            "undo_depth": len(self._history),
            "redo_depth": len(self._redo),
        }
