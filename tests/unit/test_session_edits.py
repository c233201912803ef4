"""`InteractiveSession.set_label` and `redo`: uploaded (brushed) masks are steps of the same
history as clicks. An untrained tiny network is enough: this is about the session's bookkeeping."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click
from segloop.ml.predictor import Predictor
from segloop.ml.session import InteractiveSession
from tests.unit.tiny_model import tiny_predictor

SHAPE = (20, 40, 20)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return tiny_predictor()


@pytest.fixture()
def session(predictor: Predictor) -> InteractiveSession:
    image = Volume(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), np.eye(4))
    return predictor.session(image)


def mask(s: InteractiveSession) -> np.ndarray:
    return np.asarray(s.prediction.label.array).copy()


def test_set_label_is_an_undoable_step(session: InteractiveSession) -> None:
    start = mask(session)
    session.add_clicks([Click(1, (10, 4, 10))])
    clicked = mask(session)
    clicked_probs = session.prediction.probabilities.copy()
    edited = clicked.copy()
    edited[2:6, 30:36, 2:6] = 2
    edited[10, 4, 10] = 0  # erase the clicked voxel
    pred = session.set_label(Volume(edited, np.eye(4)))
    assert np.array_equal(np.asarray(pred.label.array), edited)
    assert session.clicks == [] and session.undo_depth == 2 and session.redo_depth == 0
    # changed voxels are certain, the others keep their probabilities
    probs = pred.probabilities
    unchanged = edited == clicked
    assert (~unchanged).sum() > 0
    assert np.allclose(probs[2][~unchanged & (edited == 2)], 1.0) and np.allclose(probs[0][~unchanged & (edited == 0)], 1.0)
    assert np.allclose(probs[:, unchanged], clicked_probs[:, unchanged])

    assert np.array_equal(np.asarray(session.undo().label.array), clicked)
    assert len(session.clicks) == 1  # the click is back
    assert np.array_equal(np.asarray(session.undo().label.array), start)
    assert session.redo_depth == 2
    assert np.array_equal(np.asarray(session.redo().label.array), clicked)
    assert np.array_equal(np.asarray(session.redo().label.array), edited)
    assert session.clicks == [] and session.redo_depth == 0
    before = session.prediction
    assert session.redo() is before  # nothing to redo: no-op


def test_click_after_upload_refines_on_top(session: InteractiveSession) -> None:
    edited = mask(session)
    edited[2:6, 30:36, 2:6] = 2  # far from the next click's ROI (one 16^3 patch around y=4)
    edited[12, 5, 12] = 0
    session.set_label(edited)
    pred = session.add_clicks([Click(1, (10, 4, 10))])
    label = np.asarray(pred.label.array)
    assert label[10, 4, 10] == 1
    assert np.array_equal(label[2:6, 30:36, 2:6], edited[2:6, 30:36, 2:6])
    assert [c.point for c in session.clicks] == [(10, 4, 10)]


def test_new_step_clears_redo(session: InteractiveSession) -> None:
    session.add_clicks([Click(1, (10, 4, 10))])
    session.undo()
    assert session.redo_depth == 1
    session.add_clicks([Click(2, (10, 30, 10))])
    assert session.redo_depth == 0
    session.undo()
    edited = mask(session)
    edited[0, 0, 0] = 2 if edited[0, 0, 0] != 2 else 1
    session.set_label(edited)
    assert session.redo_depth == 0 and session.info()["redo_depth"] == 0


def test_identical_label_changes_nothing(session: InteractiveSession) -> None:
    session.add_clicks([Click(1, (10, 4, 10))])
    before = session.prediction
    assert session.set_label(mask(session)) is before
    assert session.undo_depth == 1 and len(session.clicks) == 1


def test_set_label_checks_its_input(session: InteractiveSession) -> None:
    with pytest.raises(ValueError, match="shape"):
        session.set_label(np.zeros((SHAPE[0] + 1, SHAPE[1], SHAPE[2]), np.uint8))
    bad = mask(session)
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="7"):
        session.set_label(bad)
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    with pytest.raises(ValueError, match="affine"):
        session.set_label(Volume(mask(session), shifted))
    assert session.undo_depth == 0


def test_step_predictions_keep_their_probabilities(session: InteractiveSession) -> None:
    """Steps share the session's probability array (no per-step copy); each step's prediction
    still gives that step's values, however many steps (clicks, undo, redo, uploads) came after."""
    preds = [session.prediction]
    eager = [session.prediction.probabilities.copy()]  # read at once: the values of that moment
    lazy = [session.prediction]  # read only at the end
    session.add_clicks([Click(1, (10, 4, 10))])
    lazy.append(session.prediction)
    session.add_clicks([Click(2, (10, 30, 10))])
    preds.append(session.prediction)
    eager.append(session.prediction.probabilities.copy())
    lazy.append(session.prediction)
    session.undo()
    lazy.append(session.prediction)
    session.redo()
    lazy.append(session.prediction)
    edited = mask(session)
    edited[2:6, 30:36, 2:6] = 2
    session.set_label(edited)
    lazy.append(session.prediction)
    session.add_clicks([Click(1, (12, 20, 8))])
    lazy.append(session.prediction)
    session.undo()
    session.undo()
    lazy.append(session.prediction)

    # what each state must hold: a fresh session replaying the same steps, copied at once
    image = session.image
    ref = session.predictor.session(image)
    want = [ref.prediction.probabilities.copy()]
    ref.add_clicks([Click(1, (10, 4, 10))])
    want.append(ref.prediction.probabilities.copy())
    ref.add_clicks([Click(2, (10, 30, 10))])
    want.append(ref.prediction.probabilities.copy())
    ref.undo()
    want.append(ref.prediction.probabilities.copy())
    ref.redo()
    want.append(ref.prediction.probabilities.copy())
    ref.set_label(edited)
    want.append(ref.prediction.probabilities.copy())
    ref.add_clicks([Click(1, (12, 20, 8))])
    want.append(ref.prediction.probabilities.copy())
    ref.undo()
    ref.undo()
    want.append(ref.prediction.probabilities.copy())

    assert np.array_equal(eager[0], want[0]) and np.array_equal(eager[1], want[2])
    assert np.array_equal(preds[1].probabilities, want[2])
    for n, (p, w) in enumerate(zip(lazy, want, strict=True)):
        assert np.array_equal(p.probabilities, w), f"state {n}"
        assert np.array_equal(p.label.array, w.argmax(axis=0)), f"label of state {n}"
    # the current state is the session's live array until the next step, then its own copy
    current = session.prediction.probabilities
    assert current is not session._probs
    session.add_clicks([Click(2, (5, 5, 5))])
    assert np.array_equal(current, want[-1])


def test_each_step_says_where_it_changed_the_mask(session: InteractiveSession) -> None:
    """``Prediction.changed``: (the previous state's step, the box the step changed)."""
    assert session.prediction.changed is None
    prev = session.prediction
    edited = mask(session)
    edited[2:6, 30:36, 2:6] = 2
    steps = [
        lambda: session.add_clicks([Click(1, (10, 4, 10))]),
        lambda: session.add_clicks([Click(2, (3, 35, 15)), Click(1, (15, 20, 4))]),
        session.undo,
        session.redo,
        lambda: session.set_label(edited),
        session.undo,
        session.undo,
    ]
    for step in steps:
        pred = step()
        assert pred.changed is not None and pred.changed[0] == prev.step and pred.step > prev.step
        outside = np.ones(SHAPE, dtype=bool)
        outside[pred.changed[1]] = False
        assert np.array_equal(np.asarray(pred.label.array)[outside], np.asarray(prev.label.array)[outside])
        prev = pred


def test_a_stroke_box_is_all_that_is_checked_and_compared(session: InteractiveSession) -> None:
    """A brush stroke's box (the caller's promise that nothing else differs) makes the step cost
    the box: the result equals the whole-label path's, and the box's own values are checked."""
    start = mask(session)
    edited = start.copy()
    edited[3:5, 10:14, 6] = 2
    box = (slice(2, 6), slice(9, 15), slice(6, 7))
    pred = session.set_label(Volume(edited, np.eye(4)), box=box)
    assert (mask(session) == edited).all() and session.undo_depth == 1
    assert pred.changed is not None and pred.changed[1] == (slice(3, 5), slice(10, 14), slice(6, 7))
    session.undo()
    assert (mask(session) == start).all()
    whole = session.set_label(Volume(edited, np.eye(4)))  # the same edit without a box: the same step
    assert (mask(session) == edited).all() and whole.changed is not None and whole.changed[1] == pred.changed[1]
    session.undo()
    bad = edited.copy()
    bad[4, 12, 6] = 9
    with pytest.raises(ValueError, match=r"values \[9\]"):
        session.set_label(Volume(bad, np.eye(4)), box=box)
    outside = start.copy()
    outside[15, 30, 15] = 9  # outside the promised box: not looked at, and not applied
    session.set_label(Volume(outside, np.eye(4)), box=box)
    assert (mask(session) == start).all() and session.undo_depth == 0


def test_a_session_goes_with_its_last_reference_and_its_predictions_keep_their_values(predictor: Predictor) -> None:
    """No reference cycle: a large session's arrays are freed when it is dropped, not whenever
    Python's cyclic collector next runs; an earlier step's prediction still has its values."""
    image = Volume(np.random.default_rng(1).normal(size=SHAPE).astype(np.float32), np.eye(4))
    gc.disable()
    try:
        s = predictor.session(image)
        first = s.prediction
        expected = s.prediction.probabilities.copy()
        s.add_clicks([Click(1, (10, 4, 10))])
        s.add_clicks([Click(2, (12, 30, 12))])
        last = s.prediction
        last_expected = s.prediction.probabilities.copy()
        alive = weakref.ref(s)
        del s
        assert alive() is None
        assert np.array_equal(first.probabilities, expected)
        assert np.array_equal(last.probabilities, last_expected)
    finally:
        gc.enable()
