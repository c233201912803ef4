"""Click parsing, guidance encoding, box channels and the boxes simulated in training."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.ml.clicks import Click, parse_clicks
from segloop.ml.guidance import encode_boxes, encode_guidance, finest_axis_sigma
from segloop.store.records import LabelClass, LabelSchema

SCHEMA = LabelSchema((LabelClass(0, "background"), LabelClass(1, "Anterior"), LabelClass(2, "Posterior")))


def test_parse_clicks_names_values_background() -> None:
    spec = [
        {"class": "anterior", "points": [[1, 2, 3], [0, 0, 0]]},
        {"class": 2, "points": [[4, 4, 4]]},
        {"class": "background", "points": [[9, 9, 9]]},
        {"class": "2", "points": []},
    ]
    clicks = parse_clicks(spec, SCHEMA, (10, 10, 10))
    assert clicks == [Click(1, (1, 2, 3)), Click(1, (0, 0, 0)), Click(2, (4, 4, 4)), Click(0, (9, 9, 9))]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([{"class": "hippocampus", "points": [[1, 1, 1]]}], "unknown class 'hippocampus'"),
        ([{"class": 5, "points": [[1, 1, 1]]}], "unknown class 5"),
        ([{"class": 1, "points": [[10, 1, 1]]}], r"\[10, 1, 1\] is outside"),
        ([{"class": 1, "points": [[-1, 1, 1]]}], "outside"),
        ([{"class": 1, "points": [[1, 1]]}], "not \\[i, j, k\\]"),
        ([{"class": 1, "points": [[1.5, 1, 1]]}], "integer"),
        ([{"points": [[1, 1, 1]]}], "entry 0"),
        ({"class": 1}, "must be a list"),
    ],
)
def test_parse_clicks_errors(spec: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_clicks(spec, SCHEMA, (10, 10, 10))  # type: ignore[arg-type]


def test_zeros_without_clicks() -> None:
    g = encode_guidance([], (5, 6, 7), [0, 1, 2])
    assert g.shape == (3, 5, 6, 7) and g.dtype == np.float32 and not g.any()


def test_gaussian_blob_per_class() -> None:
    g = encode_guidance([Click(1, (5, 5, 5)), Click(0, (1, 1, 1))], (11, 11, 11), [0, 1, 2], sigma=2.0)
    assert g[1, 5, 5, 5] == pytest.approx(1.0)
    assert g[1, 6, 5, 5] == pytest.approx(np.exp(-1 / 8))
    assert g[1, 7, 7, 5] == pytest.approx(np.exp(-8 / 8))
    assert g[1, 0, 0, 0] == 0.0  # beyond 3 sigma
    assert g[0, 1, 1, 1] == pytest.approx(1.0)
    assert not g[2].any()
    assert g.max() <= 1.0


def test_overlapping_clicks_take_max_and_crop_offset() -> None:
    g = encode_guidance([Click(1, (4, 4, 4)), Click(1, (5, 4, 4))], (10, 10, 10), [0, 1], sigma=1.0)
    assert g[1, 4, 4, 4] == pytest.approx(1.0) and g[1, 5, 4, 4] == pytest.approx(1.0)
    crop = encode_guidance([Click(1, (4, 4, 4))], (4, 4, 4), [0, 1], sigma=1.0, offset=(3, 3, 3))
    full = encode_guidance([Click(1, (4, 4, 4))], (10, 10, 10), [0, 1], sigma=1.0)
    assert np.allclose(crop, full[:, 3:7, 3:7, 3:7])
    scaled = encode_guidance([Click(1, (2, 2, 2))], (10, 10, 10), [0, 1], sigma=1.0, scale=(2.0, 2.0, 2.0))
    assert scaled[1, 4, 4, 4] == pytest.approx(1.0)


def test_a_blob_can_have_a_width_per_axis() -> None:
    """(3, 3, 0.6) voxels -- as long in mm on every axis of a 0.8 x 0.8 x 4 mm grid: 2 slices either side."""
    sigma = (3.0, 3.0, 0.6)
    assert finest_axis_sigma(sigma) == 3.0 and finest_axis_sigma(2.0) == 2.0
    g = encode_guidance([Click(1, (10, 10, 5))], (21, 21, 11), [0, 1], sigma=sigma)
    assert g[1, 10, 10, 5] == pytest.approx(1.0)
    assert g[1, 10, 10, 6] == pytest.approx(np.exp(-1 / (2 * 0.36)))  # one slice away: 4 mm
    assert g[1, 15, 10, 5] == pytest.approx(np.exp(-25 / 18))  # 5 voxels in plane: 4 mm
    slices = np.nonzero(g[1].any(axis=(0, 1)))[0]
    assert slices.min() == 3 and slices.max() == 7  # ceil(3 * 0.6) = 2 slices either side
    assert g[1, 19, 10, 5] > 0 and g[1, 10, 10, 7] > 0 and g[1, 19, 10, 7] == 0.0  # cut at the ellipsoid of the radii
    with pytest.raises(ValueError, match="sigma"):
        encode_guidance([Click(1, (1, 1, 1))], (3, 3, 3), [0, 1], sigma=(1.0, 0.0, 1.0))
    from segloop.ml.train_config import TrainConfig

    assert TrainConfig.from_dict({"guidance_sigma": [3, 3, 0.6]}).guidance_sigma == [3, 3, 0.6]
    for bad in ([3, 3], [3, 0, 3], 0):
        with pytest.raises(ValueError, match="guidance_sigma"):
            TrainConfig.from_dict({"guidance_sigma": bad})


def test_unknown_values_ignored_and_outside_clipped() -> None:
    g = encode_guidance([Click(7, (1, 1, 1)), Click(1, (50, 50, 50))], (5, 5, 5), [0, 1])
    assert not g.any()


def test_box_channels_fill_each_foreground_class_box() -> None:
    box = (slice(2, 5), slice(1, 3), slice(0, 4))
    g = encode_boxes([(2, box), (0, box), (9, box)], (6, 6, 6), [0, 1, 2])
    assert g.shape == (2, 6, 6, 6) and not g[0].any()  # one channel per foreground class; bg / unknown ignored
    expected = np.zeros((6, 6, 6), dtype=bool)
    expected[box] = True
    assert (g[1] == expected).all()
    # a crop sees its part of the box, a coarser grid every voxel the box touches
    crop = encode_boxes([(2, box)], (3, 3, 3), [0, 1, 2], offset=(3, 0, 0))
    assert (crop[1] == expected[3:6, 0:3, 0:3]).all()
    half = encode_boxes([(1, (slice(1, 4), slice(0, 2), slice(0, 1)))], (4, 4, 4), [0, 1], scale=(0.5, 0.5, 0.5))
    assert half[0, :, :, :].nonzero()[0].min() == 0 and half[0].nonzero()[0].max() == 1  # [0.5, 2) -> voxels 0, 1
    assert not encode_boxes([(1, (slice(8, 9), slice(0, 1), slice(0, 1)))], (4, 4, 4), [0, 1]).any()  # outside


def test_simulated_boxes_enclose_the_class_with_bounded_slack() -> None:
    from segloop.ml.patches import BOX_SLACK, simulate_boxes

    labs = np.zeros((3, 16, 16, 16), dtype=np.uint8)
    labs[:, 5:9, 6:10, 4:7] = 1
    labs[1, 10:12, 10:12, 10:12] = 2  # class 2 only in the second patch
    rng = np.random.default_rng(0)
    boxes = simulate_boxes(labs, 3, 1.0, rng)
    assert boxes.shape == (3, 2, 16, 16, 16)
    for i in range(3):
        inside = boxes[i, 0] > 0
        assert inside[labs[i] == 1].all()  # every voxel of the class is in its box
        nz = np.nonzero(inside)
        for ax, (lo, hi) in enumerate(((5, 8), (6, 9), (4, 6))):
            assert lo - BOX_SLACK <= nz[ax].min() <= lo and hi <= nz[ax].max() <= hi + BOX_SLACK
    assert boxes[1, 1].any() and not boxes[0, 1].any() and not boxes[2, 1].any()  # no class, no box
    assert not simulate_boxes(labs, 3, 0.0, rng).any()
