"""Prompts as steps of an `InteractiveSession` (box, lasso, scribbles; see `segloop.ml.prompts`).

Each prompt is built from the session's own steps — `add_clicks` for what the model should
follow, `set_label` for the constraint the prompt states — and then squashed into **one** step
of the session's history, so one `undo` takes the whole prompt back and `redo` re-applies it.

- box: the box's click (only where the model has nothing of the class in it), then its class
  is removed outside the box; a model trained with box prompts (``box_input``) reads a 3D box
  itself instead of the click: the network runs again on the box's region with the box in its
  box channel, and every later pass of the session keeps it there (2D boxes, which it was not
  trained on, take the click);
- lasso: the lasso's clicks (the model grows the outline into 3D), then its slice is set to the
  contour's inside exactly;
- box and lasso state *constraints* (`segloop.ml.prompts.Constraint`) that the session keeps:
  every later click's network pass is held to them, so a click next to a box does not bring
  the class back outside it;
- scribbles, ``mode="guidance"``: the strokes sub-sampled into clicks (at least twice the
  guidance width apart), then every scribbled voxel takes its stroke's class;
- scribbles, ``mode="graphcut"``: no network call; a min-cut seeded by the strokes on the
  current probabilities and the image's intensities (`segloop.ml.graphcut.refine_label`).

After a model-based prompt its clicks stay the session's clicks (they keep steering the next
click); the graph cut is an edit like the brush: the clicks so far are part of its mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from segloop.ml import prompts
from segloop.ml.clicks import check_point
from segloop.ml.graphcut import GraphCutParams, refine_label
from segloop.ml.guidance import finest_axis_sigma

if TYPE_CHECKING:
    from segloop.ml.predictor import Prediction
    from segloop.ml.session import InteractiveSession

ScribbleMode = Literal["guidance", "graphcut"]
SCRIBBLE_MODES = ("guidance", "graphcut")


def _check_value(session: InteractiveSession, value: int, what: str, background: bool = False) -> None:
    values = session.predictor.spec.class_values
    if int(value) not in values or (int(value) == 0 and not background):
        raise ValueError(f"{what}: class {value} is not a foreground class of the model ({[v for v in values if v]})")


def _check_points(session: InteractiveSession, points: Sequence[Sequence[int]]) -> None:
    for p in points:
        check_point(list(p), session.image.shape)


def _one_step(session: InteractiveSession, build: Callable[[], object],
              constraints: Sequence[prompts.Constraint] = ()) -> Prediction:
    """Run ``build`` (which makes session steps) and squash what it added into one step; the
    prompt's ``constraints`` join the session's for this step and every later one (undo takes
    them back with the step; a prompt that changes no voxel makes no step, and its constraints
    stay until an edit replaces the mask)."""
    depth, before = session.undo_depth, session.prediction.step
    previous = session.constraints
    session.constraints = (*previous, *constraints)
    try:
        build()
    except BaseException:
        session._squash_steps(depth, before)
        if session.undo_depth > depth:  # a half-applied prompt is taken back whole
            session.undo()
            session._redo.clear()
        session.constraints = previous
        raise
    out = session._squash_steps(depth, before)
    if session.undo_depth > depth:
        clicks, box, probs, label, _ = session._history[-1]
        session._history[-1] = (clicks, box, probs, label, previous)
    return out


def _require_interactive(session: InteractiveSession, what: str) -> None:
    check = getattr(session.predictor, "require_interactive", None)  # automatic-only models refuse guidance
    if check is not None:
        check(what)


def _keep_clicks(session: InteractiveSession, label: np.ndarray) -> None:
    """`set_label` as part of a prompt: the clicks and constraints stay in force."""
    clicks, constraints = list(session.clicks), session.constraints
    session.set_label(label)
    session.clicks, session.constraints = clicks, constraints


def add_box(session: InteractiveSession, box: prompts.Box) -> Prediction:
    _require_interactive(session, "a box")
    _check_value(session, box.value, "box")
    _check_points(session, [box.lo, box.hi])
    values = session.predictor.spec.class_values

    def build() -> None:
        if session.predictor.spec.box_input and box.flat_axis is None:
            session.refine_region(box.slices)  # the network reads the box (now among the constraints)
        else:
            session.add_clicks(prompts.box_clicks(box, session._label))
        outside = prompts.box_outside(box, session.image.shape)
        _keep_clicks(session, prompts.reassign(session._label, session._probs, values, box.value, outside))

    return _one_step(session, build, prompts.box_constraints(box, session.image.shape))


def add_lasso(session: InteractiveSession, lasso: prompts.Lasso) -> Prediction:
    _require_interactive(session, "a lasso")
    _check_value(session, lasso.value, "lasso")
    _check_points(session, lasso.points)
    shape = session.image.shape
    values = session.predictor.spec.class_values
    sl, inside = prompts.lasso_constraint(lasso, shape)
    if not inside.any():
        raise ValueError("the lasso encloses no voxel")

    def build() -> None:
        session.add_clicks(prompts.lasso_clicks(lasso, shape))
        where = np.zeros(shape, dtype=bool)
        where[sl] = ~inside
        lab = prompts.reassign(session._label, session._probs, values, lasso.value, where)
        lab[sl][inside] = lasso.value
        _keep_clicks(session, lab)

    return _one_step(session, build, prompts.lasso_constraints(lasso, shape, values))


def add_scribbles(
    session: InteractiveSession,
    strokes: Sequence[prompts.Stroke],
    mode: ScribbleMode = "guidance",
    params: GraphCutParams | None = None,
) -> Prediction:
    if mode not in SCRIBBLE_MODES:
        raise ValueError(f"unknown scribbles mode {mode!r} (known: {', '.join(SCRIBBLE_MODES)})")
    if not strokes:
        raise ValueError("no scribbles")
    for s in strokes:
        _check_value(session, s.value, "scribble", background=True)
        _check_points(session, s.points)
    shape = session.image.shape
    seeds = prompts.rasterize_strokes(strokes, shape)
    if mode == "graphcut":
        image = np.asarray(session.image.array, dtype=np.float32)
        if image.ndim == 4:
            image = image[..., 0]
        lab = refine_label(
            image, session._probs, session._label, session.predictor.spec.class_values, seeds, session.image.spacing, params
        )
        return _one_step(session, lambda: session.set_label(lab))
    _require_interactive(session, "scribbles")
    sigma = finest_axis_sigma(session.predictor.spec.guidance_sigma)

    def build() -> None:
        session.add_clicks(prompts.stroke_clicks(strokes, spacing=2.0 * sigma))
        lab = session._label.copy()
        for v, m in seeds.items():
            lab[m] = v
        _keep_clicks(session, lab)

    return _one_step(session, build)
