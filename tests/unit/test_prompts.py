"""Box, lasso and scribble prompts: parsing and rasterising (segloop.ml.prompts) and their steps
in an interactive session (segloop.ml.prompt_session). An untrained tiny network: this is about
what each prompt guarantees (its constraint, its clicks, one undoable step), not the model's skill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segloop.imaging.volume import Volume
from segloop.ml import prompts
from segloop.ml.clicks import Click
from segloop.ml.predictor import Predictor
from segloop.ml.session import InteractiveSession
from segloop.store.records import LabelClass, LabelSchema
from tests.unit.tiny_model import tiny_predictor

SHAPE = (20, 40, 20)
SCHEMA = LabelSchema([LabelClass(1, "a", "#ff0000"), LabelClass(2, "b", "#00ff00")])


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return tiny_predictor()


@pytest.fixture()
def session(predictor: Predictor) -> InteractiveSession:
    image = Volume(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), np.eye(4))
    return predictor.session(image)


def mask(s: InteractiveSession) -> np.ndarray:
    return np.asarray(s.prediction.label.array).copy()


# --- parsing and rasterising ----------------------------------------------------------------------


def test_parse_box_orders_corners_and_knows_2d_from_3d() -> None:
    b = prompts.parse_box({"class": "a", "box": [[9, 30, 5], [2, 10, 5]]}, SCHEMA, SHAPE)
    assert (b.value, b.lo, b.hi, b.flat_axis) == (1, (2, 10, 5), (9, 30, 5), 2)
    assert prompts.parse_box({"class": 2, "box": [[1, 1, 1], [5, 6, 7]]}, SCHEMA, SHAPE).flat_axis is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"class": "background", "box": [[1, 1, 1], [5, 5, 5]]}, "foreground"),
        ({"class": "c", "box": [[1, 1, 1], [5, 5, 5]]}, "unknown class"),
        ({"class": "a", "box": [[1, 1, 1], [5, 50, 5]]}, "outside the volume"),
        ({"class": "a", "box": [[1, 1, 1], [1, 5, 1]]}, "flat on 2 axes"),
        ({"class": "a", "box": [[1, 1, 1]]}, "two opposite corners"),
    ],
)
def test_bad_boxes_are_refused(spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prompts.parse_box(spec, SCHEMA, SHAPE)


def test_lasso_mask_is_the_inside_of_the_contour_on_its_slice() -> None:
    lasso = prompts.parse_lasso({"class": "b", "lasso": [[4, 10, 7], [14, 10, 7], [14, 30, 7], [4, 30, 7]]}, SCHEMA, SHAPE)
    assert (lasso.axis, lasso.index, lasso.value) == (2, 7, 2)
    inside = prompts.lasso_mask(lasso, SHAPE)
    assert inside.shape == (20, 40)
    expected = np.zeros((20, 40), dtype=bool)
    expected[4:15, 10:31] = True
    assert (inside == expected).all()


def test_bad_lassos_are_refused() -> None:
    with pytest.raises(ValueError, match="one slice"):
        prompts.parse_lasso({"class": "a", "lasso": [[1, 1, 1], [5, 5, 5], [8, 2, 3]]}, SCHEMA, SHAPE)
    with pytest.raises(ValueError, match="at least 3"):
        prompts.parse_lasso({"class": "a", "lasso": [[1, 1, 1], [5, 5, 1]]}, SCHEMA, SHAPE)


def test_strokes_rasterise_as_connected_lines_and_subsample_into_clicks() -> None:
    strokes = prompts.parse_strokes(
        [{"class": "a", "points": [[2, 2, 2], [2, 22, 2]]}, {"class": "background", "points": [[10, 5, 5]], "radius": 1}],
        SCHEMA,
        SHAPE,
    )
    seeds = prompts.rasterize_strokes(strokes, SHAPE)
    assert seeds[1].sum() == 21 and seeds[1][2, 2:23, 2].all()
    assert seeds[0].sum() == 7  # a ball of radius 1
    clicks = prompts.stroke_clicks(strokes, spacing=6)
    assert [c.point for c in clicks if c.value == 1] == [(2, 2, 2), (2, 8, 2), (2, 14, 2), (2, 20, 2)]
    assert [c.point for c in clicks if c.value == 0] == [(10, 5, 5)]
    with pytest.raises(ValueError, match="radius"):
        prompts.parse_strokes([{"class": "a", "points": [[1, 1, 1]], "radius": 99}], SCHEMA, SHAPE)


def test_box_click_only_where_the_model_has_nothing_of_the_class() -> None:
    box = prompts.Box(1, (4, 10, 5), (12, 30, 5))
    label = np.zeros(SHAPE, dtype=np.uint8)
    assert prompts.box_clicks(box, label) == [Click(1, (8, 20, 5))]  # nothing of the class: the centre
    label[7:9, 18:22, 5] = 1  # the class already in the box's central half: no click to disturb it
    assert prompts.box_clicks(box, label) == []


def test_constraints_hold_their_class_out_of_a_window() -> None:
    box3 = prompts.Box(1, (4, 10, 5), (12, 30, 9))
    (c3,) = prompts.box_constraints(box3, SHAPE)
    window = (slice(0, 8), slice(8, 16), slice(5, 6))
    got = c3.within(window)
    expect = prompts.box_outside(box3, SHAPE)[window]
    assert got.shape == (8, 8, 1) and (got == expect).all() and got.any() and not got.all()
    box2 = prompts.Box(2, (4, 10, 5), (12, 30, 5))
    (c2,) = prompts.box_constraints(box2, SHAPE)
    full = (slice(0, SHAPE[0]), slice(0, SHAPE[1]), slice(0, SHAPE[2]))
    assert (c2.within(full) == prompts.box_outside(box2, SHAPE)).all()  # only on its slice
    probs = np.full((3, *SHAPE), 1 / 3, dtype=np.float32)
    probs[:, 0, 0, 5] = (0.0, 0.0, 1.0)  # nothing but class 2 where it is not allowed: background takes it
    prompts.apply_constraints(probs, (c2,), full, (0, 1, 2))
    out = prompts.box_outside(box2, SHAPE)
    assert (probs[2][out] == 0).all() and np.allclose(probs[:, out].sum(axis=0), 1.0)
    assert np.allclose(probs[:2, 1, 0, 5], 0.5)  # the class's share goes to the others, in proportion
    assert (probs[:, 0, 0, 5] == (1.0, 0.0, 0.0)).all()
    assert np.allclose(probs[:, 6, 20, 5], 1 / 3)  # inside the rectangle: untouched


# --- session steps --------------------------------------------------------------------------------


def test_box_removes_the_class_outside_and_is_one_undoable_step(session: InteractiveSession) -> None:
    start = mask(session)
    box = prompts.Box(1, (3, 8, 3), (15, 30, 15))
    pred = session.add_box(box)
    got = mask(session)
    outside = prompts.box_outside(box, SHAPE)
    assert not (got[outside] == 1).any()
    assert all(c.value == 1 and got[c.point] == 1 for c in session.clicks)  # at most its one positive click
    assert session.undo_depth == 1 and pred.changed is not None and pred.changed[0] == 1
    assert len(session.constraints) == 1
    session.undo()
    assert (mask(session) == start).all() and session.constraints == ()
    session.redo()
    assert (mask(session) == got).all() and len(session.constraints) == 1


def test_a_click_after_a_box_does_not_bring_the_class_back_outside(session: InteractiveSession) -> None:
    box = prompts.Box(1, (3, 8, 3), (9, 20, 9))
    session.add_box(box)
    outside = prompts.box_outside(box, SHAPE)
    # clicks of class 1 inside the box near its faces: the network's window reaches far outside
    session.add_clicks([Click(1, (8, 19, 8)), Click(1, (4, 9, 4))])
    got = mask(session)
    assert not (got[outside] == 1).any()
    assert (got[8, 19, 8], got[4, 9, 4]) == (1, 1)
    # an explicit click of the class outside the box is the user's word: it wins at its voxel
    session.add_clicks([Click(1, (15, 35, 15))])
    assert mask(session)[15, 35, 15] == 1
    session.undo()
    session.undo()
    assert len(session.constraints) == 1  # back to right after the box
    session.set_label(mask(session))  # no change: still in force
    assert len(session.constraints) == 1
    edited = mask(session)
    edited[15:18, 35:38, 15:18] = 1
    session.set_label(edited)  # the user's own edit replaces the mask and ends the prompt's constraint
    assert session.constraints == ()


class _Recorder(torch.nn.Module):
    """The network, keeping every input it is given."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


def test_a_box_model_reads_the_box_and_keeps_it_for_later_clicks() -> None:
    pred = tiny_predictor(box_input=True)
    recorder = _Recorder(pred.net)
    pred.net = recorder
    assert pred.spec.extra_channels == 3 + 2  # guidance of 3 classes, boxes of the 2 foreground classes
    session = pred.session(Volume(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), np.eye(4)))
    start = mask(session)
    assert all(not x[:, 4:].any() for x in recorder.inputs)  # automatic: no box
    recorder.inputs.clear()
    box = prompts.Box(1, (3, 8, 3), (9, 20, 9))
    session.add_box(box)
    assert session.clicks == [] and session.undo_depth == 1  # the network reads the box: no click
    seen = torch.cat([x[0, 4] for x in recorder.inputs], dim=0)
    assert recorder.inputs and seen.max() == 1.0 and not any(x[:, 5].any() for x in recorder.inputs)
    assert not (mask(session)[prompts.box_outside(box, SHAPE)] == 1).any()  # and keeps to it
    recorder.inputs.clear()
    session.add_clicks([Click(2, (8, 22, 8))])  # a later click's window overlaps the box: the box is in its input
    assert any(x[:, 4].any() for x in recorder.inputs)
    session.undo()
    session.undo()
    assert (mask(session) == start).all() and session.constraints == ()
    recorder.inputs.clear()
    session.add_box(prompts.Box(2, (3, 8, 5), (9, 20, 5)))  # a 2D box: not what it was trained on, a click instead
    assert not any(x[:, 4:].any() for x in recorder.inputs)


def test_lasso_sets_its_slice_exactly(session: InteractiveSession) -> None:
    lasso = prompts.Lasso(2, 2, 10, ((4, 10, 10), (14, 10, 10), (14, 30, 10), (4, 30, 10)))
    session.add_lasso(lasso)
    got = mask(session)
    inside = prompts.lasso_mask(lasso, SHAPE)
    assert (got[:, :, 10][inside] == 2).all()
    assert not (got[:, :, 10][~inside] == 2).any()
    assert session.undo_depth == 1
    assert any(c.value == 2 for c in session.clicks) and any(c.value == 0 for c in session.clicks)
    session.add_clicks([Click(2, (9, 20, 11)), Click(1, (9, 20, 9))])  # the slice stays as the lasso said
    again = mask(session)
    assert (again[:, :, 10][inside] == 2).all() and not (again[:, :, 10][~inside] == 2).any()


def test_scribbles_as_guidance_mark_their_voxels_and_keep_steering(session: InteractiveSession) -> None:
    strokes = [prompts.Stroke(1, ((5, 5, 5), (5, 25, 5))), prompts.Stroke(0, ((15, 30, 15),), radius=1)]
    session.add_scribbles(strokes)
    got = mask(session)
    assert (got[5, 5:26, 5] == 1).all() and got[15, 30, 15] == 0
    assert session.undo_depth == 1 and len(session.clicks) == 5
    session.add_clicks([Click(2, (10, 20, 10))])
    assert len(session.clicks) == 6  # the strokes' clicks still guide the model


def test_scribbles_graphcut_refines_toward_the_image(predictor: Predictor) -> None:
    truth = np.zeros(SHAPE, dtype=bool)
    truth[5:15, 10:30, 5:15] = True
    image = Volume(np.where(truth, 100.0, 0.0).astype(np.float32), np.eye(4))
    initial = np.zeros(SHAPE, dtype=np.uint8)
    initial[7:13, 14:26, 7:13] = 1  # too small
    session = predictor.session(image, Volume(initial, np.eye(4)))
    strokes = [prompts.Stroke(1, ((10, 11, 10), (10, 28, 10))), prompts.Stroke(0, ((2, 2, 2), (18, 2, 18)))]
    session.add_scribbles(strokes, mode="graphcut")
    got = mask(session)
    assert ((got == 1) == truth).mean() > 0.99
    session.undo()
    assert (mask(session) == initial).all()


def test_bad_prompts_change_nothing(session: InteractiveSession) -> None:
    start = mask(session)
    with pytest.raises(ValueError, match="foreground class"):
        session.add_box(prompts.Box(7, (1, 1, 1), (5, 5, 5)))
    with pytest.raises(ValueError, match="mode"):
        session.add_scribbles([prompts.Stroke(1, ((1, 1, 1),))], mode="crf")
    with pytest.raises(ValueError, match="outside the volume"):
        session.add_scribbles([prompts.Stroke(1, ((1, 1, 99),))])
    assert (mask(session) == start).all() and session.undo_depth == 0
