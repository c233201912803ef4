"""The virtual user's boxes, lassos and scribbles (segloop.ml.virtual_prompts), the prompt
figures (segloop.ml.prompt_eval) and the graph cut's likelihood from a short stroke."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.ml import prompts
from segloop.ml.graphcut import refine_label
from segloop.ml.prompt_eval import PROTOCOLS, evaluate_prompts, run_protocol
from segloop.ml.virtual_prompts import error_scribbles, reference_box, reference_lasso
from tests.unit.tiny_model import tiny_predictor

SHAPE = (20, 40, 20)


def blob_reference() -> np.ndarray:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[4:10, 8:30, 6:12] = 1
    ref[12:16, 10:20, 8:11] = 2
    ref[5:9, 12:20, 11] = 1  # the widest slice of class 1 along the last axis is 6..10 (22x6)
    return ref


def test_reference_box_is_the_class_bounding_box_grown_by_the_margin() -> None:
    ref = blob_reference()
    assert reference_box(ref, 1) == prompts.Box(1, (3, 7, 5), (10, 30, 12))
    assert reference_box(ref, 2, margin=0) == prompts.Box(2, (12, 10, 8), (15, 19, 10))
    flat = reference_box(ref, 1, margin=0, axis=2)
    assert flat is not None and flat.flat_axis == 2 and flat.lo == (4, 8, 6) and flat.hi == (9, 29, 6)
    assert reference_box(ref, 3) is None
    edge = np.zeros(SHAPE, dtype=np.uint8)
    edge[0:3, 0:3, 17:20] = 1
    assert reference_box(edge, 1, margin=2) == prompts.Box(1, (0, 0, 15), (4, 4, 19))  # clipped


def test_reference_lasso_fills_back_to_the_class_on_its_widest_slice() -> None:
    ref = blob_reference()
    ref[4:10, 8:30, 7] = 0
    ref[5:9, 9:29, 7] = 1  # an L-free but smaller slice; the widest stays a full 6x22 one
    ref[6, 20, 8] = 0  # a one-voxel hole is not part of the outline, so the fill covers it
    lasso = reference_lasso(ref, 1)
    assert lasso is not None and lasso.axis == 2 and lasso.value == 1
    inside = prompts.lasso_mask(lasso, SHAPE)
    piece = ref[:, :, lasso.index] == 1
    assert piece.sum() == 6 * 22
    assert (inside == piece).all()
    concave = np.zeros(SHAPE, dtype=np.uint8)
    concave[2:18, 5:10, 4] = 1
    concave[2:7, 5:35, 4] = 1  # an L: a contour that is not convex
    las = reference_lasso(concave, 1)
    assert las is not None and (prompts.lasso_mask(las, SHAPE) == (concave[:, :, 4] == 1)).all()
    assert reference_lasso(concave, 2) is None


def test_error_scribbles_run_inside_the_largest_error_with_the_right_class() -> None:
    ref = blob_reference()
    pred = ref.copy()
    pred[4:10, 20:30, 6:12] = 0  # a missed part of class 1 (6x10x6)
    pred[15:19, 30:38, 2:5] = 2  # a small false positive of class 2
    strokes = error_scribbles(pred, ref, 1)
    assert strokes and all(s.value == 1 for s in strokes)
    missed = (ref == 1) & (pred != 1)
    vox = np.concatenate([prompts.stroke_voxels(s) for s in strokes])
    assert missed[vox[:, 0], vox[:, 1], vox[:, 2]].all()
    assert len(vox) >= 8  # a line along the region, not a dot
    fp = error_scribbles(pred, ref, 2)
    assert fp and all(s.value == 0 for s in fp)  # a false positive is scribbled as what is there
    assert error_scribbles(ref, ref, 1) == []


def test_graph_cut_with_one_short_stroke_keeps_the_structure() -> None:
    """A stroke of a dozen voxels cannot stand for a structure whose intensities vary: the
    cut must not drop the class where its intensity is not the stroke's (it dropped ~60 %)."""
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE, dtype=bool)
    truth[4:16, 8:32, 5:15] = True
    ramp = np.linspace(60.0, 160.0, SHAPE[1])[None, :, None]
    # the surroundings hold the structure's intensities too (as tissue around a small organ does)
    image = np.where(truth, ramp, rng.uniform(40.0, 180.0, SHAPE)) + rng.normal(0, 5, SHAPE)
    label = truth.astype(np.uint8)
    probs = np.stack([~truth, truth]).astype(np.float32)
    stroke = prompts.Stroke(1, ((10, 18, 10), (10, 22, 10)))  # where the structure is ~100
    seeds = prompts.rasterize_strokes([stroke], SHAPE)
    out = refine_label(image, probs, label, (0, 1), seeds)
    kept = ((out == 1) & truth).sum() / truth.sum()
    assert kept > 0.97
    assert not ((out == 1) & ~truth).any()


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    return tiny_predictor()


def test_every_protocol_runs_and_prompts_that_state_the_truth_help(predictor) -> None:  # type: ignore[no-untyped-def]
    ref = blob_reference()
    image = Volume(np.where(ref > 0, 1.0, 0.0).astype(np.float32) + np.random.default_rng(1).normal(0, 0.1, SHAPE).astype(np.float32), np.eye(4))
    classes = [1, 2]
    auto = run_protocol(predictor, image, ref, classes, "auto")
    lasso = run_protocol(predictor, image, ref, classes, "lasso")
    box = run_protocol(predictor, image, ref, classes, "box")
    # an untrained model: its automatic mask is noise; the box removes what lies outside, the
    # lasso sets a whole slice right, so neither can make a class worse
    assert (box >= auto - 1e-9).all() and (lasso >= auto - 1e-9).all() and lasso.mean() > auto.mean()
    figures = evaluate_prompts(predictor, [(image, ref)], protocols=PROTOCOLS)
    assert figures["images"] == 1 and set(figures["protocols"]) == set(PROTOCOLS)
    for name, row in figures["protocols"].items():
        assert set(row) >= {"mean", "seconds", predictor.spec.name_of(1), predictor.spec.name_of(2)}, name
        assert 0.0 <= row["mean"] <= 1.0
    with pytest.raises(ValueError, match="unknown prompt protocol"):
        run_protocol(predictor, image, ref, classes, "wand")
