"""segloop.metrics against hand-computed values."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from segloop.metrics import (
    AGREE,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    compare_labels,
    dice,
    discrepancy_legend,
    discrepancy_map,
    hausdorff95,
    iou,
)


def test_metrics_do_not_import_torch() -> None:
    import segloop.metrics  # noqa: F401

    assert "segloop.metrics" in sys.modules
    # torch may be imported by other tests; check the package's own imports instead.
    import segloop.metrics.discrepancy as d
    import segloop.metrics.overlap as o
    import segloop.metrics.summary as s
    import segloop.metrics.surface as f

    for mod in (d, o, s, f):
        assert "torch" not in vars(mod)


def test_dice_iou_hand_computed() -> None:
    pred = np.zeros((4, 4, 4), np.uint8)
    ref = np.zeros((4, 4, 4), np.uint8)
    pred[0, 0, :3] = 1  # 3 voxels
    ref[0, 0, 1:] = 1  # 3 voxels, overlap 2
    assert dice(pred, ref, 1) == pytest.approx(2 * 2 / 6)
    assert iou(pred, ref, 1) == pytest.approx(2 / 4)


def test_empty_cases() -> None:
    empty = np.zeros((3, 3, 3), np.uint8)
    one = empty.copy()
    one[1, 1, 1] = 1
    assert dice(empty, empty, 1) == 1.0 and iou(empty, empty, 1) == 1.0
    assert dice(one, empty, 1) == 0.0 and iou(empty, one, 1) == 0.0
    assert hausdorff95(empty, empty, 1) == 0.0
    assert hausdorff95(one, empty, 1) == math.inf
    assert hausdorff95(empty, one, 1) == math.inf


def test_hausdorff95_spacing_aware() -> None:
    a = np.zeros((6, 3, 3), np.uint8)
    b = a.copy()
    a[0, 1, 1] = 1
    b[3, 1, 1] = 1
    assert hausdorff95(a, b, 1, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hausdorff95(a, b, 1) == pytest.approx(3.0)
    c = np.zeros((8, 8, 8), np.uint8)
    c[2:6, 2:6, 2:6] = 1
    assert hausdorff95(c, c, 1, (0.5, 0.5, 3.0)) == 0.0


def test_hausdorff95_is_a_percentile() -> None:
    # Reference: a 1x1x20 line; prediction: the same line plus one far outlier voxel.
    ref = np.zeros((30, 3, 22), np.uint8)
    ref[0, 1, 1:21] = 1
    pred = ref.copy()
    pred[29, 1, 1] = 1
    # pred->ref: 20 zeros and one 29 -> 95th percentile of 21 values = value at rank 19 (0-based)
    # by linear interpolation: 0 + 0.0 ... computed by numpy; the max would be 29.
    expected = float(np.percentile([0.0] * 20 + [29.0], 95))
    assert hausdorff95(pred, ref, 1) == pytest.approx(expected)
    assert hausdorff95(pred, ref, 1) < 29.0


def test_discrepancy_map_encoding() -> None:
    pred = np.array([[[0, 1, 1, 2, 2, 0, 1]]])
    ref = np.array([[[0, 1, 0, 2, 1, 2, 2]]])
    m = discrepancy_map(pred, ref, [1, 2])
    # k=0 -> class 1 codes 1/2/3; k=1 -> class 2 codes 4/5/6
    assert m.dtype == np.uint8
    assert m.ravel().tolist() == [
        0,  # bg agrees
        AGREE,  # 1 = 1
        FALSE_POSITIVE,  # pred 1, ref 0
        3 + AGREE,  # 2 = 2
        FALSE_NEGATIVE,  # pred 2, ref 1 -> missed class 1 wins
        3 + FALSE_NEGATIVE,  # pred 0, ref 2
        3 + FALSE_NEGATIVE,  # pred 1, ref 2 -> missed class 2
    ]
    legend = discrepancy_legend([1, 2], {1: "anterior", 2: "posterior"})
    assert [e["value"] for e in legend] == [1, 2, 3, 4, 5, 6]
    assert legend[4]["name"] == "posterior: false positive"


def test_compare_labels() -> None:
    pred = np.zeros((5, 5, 5), np.uint8)
    ref = pred.copy()
    pred[1:3, 1:3, 1:3] = 1
    ref[1:3, 1:3, 1:4] = 1  # 8 vs 12 voxels, overlap 8
    out = compare_labels(pred, ref, {1: "a", 2: "b"}, (1.0, 1.0, 1.0))
    assert out["classes"]["a"]["dice"] == pytest.approx(16 / 20)
    assert out["classes"]["a"]["iou"] == pytest.approx(8 / 12)
    assert out["classes"]["a"]["hd95"] == pytest.approx(1.0)
    assert out["classes"]["b"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "pred_voxels": 0.0, "ref_voxels": 0.0}
    assert out["mean"]["dice"] == pytest.approx((0.8 + 1.0) / 2)
    keyed = compare_labels(pred, ref, [1])
    assert list(keyed["classes"]) == ["1"]
    with pytest.raises(ValueError, match="does not match"):
        compare_labels(pred, ref[:4], [1])
