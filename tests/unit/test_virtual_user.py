"""The virtual user's clicks."""

from __future__ import annotations

import numpy as np

from segloop.ml.clicks import Click
from segloop.ml.virtual_user import next_click


def test_missed_class_gets_positive_click_at_interior() -> None:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:9, 2:9, 2:9] = 1  # 7^3 cube, centre (5, 5, 5)
    pred = np.zeros_like(ref)
    assert next_click(pred, ref, [1], rng=0) == Click(1, (5, 5, 5))


def test_largest_region_wins() -> None:
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[1:4, 1:4, 1:4] = 1  # small miss of class 1
    pred = np.zeros_like(ref)
    pred[10:19, 10:19, 10:19] = 2  # big false positive of class 2 (reference: background)
    click = next_click(pred, ref, [1, 2], rng=0)
    assert click == Click(0, (14, 14, 14))
    # restricted to class 1, the small miss is the only error
    assert next_click(pred, ref, [1], rng=0) == Click(1, (2, 2, 2))


def test_false_positive_over_other_class_clicks_that_class() -> None:
    ref = np.zeros((15, 15, 15), np.uint8)
    ref[3:12, 3:12, 3:12] = 2
    pred = ref.copy()
    pred[3:12, 3:12, 3:8] = 1  # class 1 predicted where the reference says 2
    click = next_click(pred, ref, [1], rng=0)
    assert click is not None and click.value == 2
    assert pred[click.point] == 1 and ref[click.point] == 2


def test_none_when_no_error_and_ignores_other_classes() -> None:
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    assert next_click(ref.copy(), ref, [1, 2], rng=0) is None
    pred = ref.copy()
    ref2 = ref.copy()
    ref2[6, 6, 6] = 2
    assert next_click(pred, ref2, [1], rng=0) is None  # error only concerns class 2


def test_deterministic_for_a_seed_and_spacing_aware() -> None:
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:10, 2:10, 2:4] = 1  # flat slab: many tied interior points
    pred = np.zeros_like(ref)
    a = [next_click(pred, ref, [1], rng=np.random.default_rng(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    seen = {next_click(pred, ref, [1], rng=s) for s in range(20)}
    assert len(seen) > 1  # ties broken at random, but reproducibly
    # Anisotropic spacing: a 5x5x5 cube with 10 mm slices along k: interior point is central in i/j.
    ref3 = np.zeros((9, 9, 9), np.uint8)
    ref3[2:7, 2:7, 2:7] = 1
    c = next_click(np.zeros_like(ref3), ref3, [1], rng=0, spacing=(1.0, 1.0, 10.0))
    assert c is not None and c.point[:2] == (4, 4)


def test_volume_edge_counts_as_border() -> None:
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[0:7, 0:7, 0:7] = 1  # touches the volume corner
    c = next_click(np.zeros_like(ref), ref, [1], rng=0)
    assert c == Click(1, (3, 3, 3))


def test_the_click_is_the_one_a_search_of_the_whole_volume_finds() -> None:
    """next_click searches only the box where either map holds the clicked classes; components,
    their order (the tie-breaks) and the click are those of the whole volume."""
    from scipy import ndimage

    from segloop.ml import virtual_user

    rng = np.random.default_rng(0)
    for case in range(40):
        shape = tuple(int(x) for x in rng.integers(8, 24, 3))
        ref = (ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52).astype(np.uint8)
        ref[ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55] = 2
        pred = ref.copy()
        flip = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.55
        pred[flip] = rng.integers(0, 3, int(flip.sum()))
        if case % 7 == 0:
            pred[:] = 0
        for classes in ([1], [2], [1, 2]):
            spacing = (1.0, 1.0, 2.5 if case % 2 else 1.0)
            whole = virtual_user._next_click_in(pred, ref, classes, np.random.default_rng(case), spacing)
            assert virtual_user.next_click(pred, ref, classes, case, spacing) == whole
