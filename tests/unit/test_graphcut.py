"""Graph-cut refinement (segloop.ml.graphcut) on small made-up volumes."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.ml.graphcut import GraphCutParams, graphcut, refine_label, region


def _sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    g = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return sum((x - c) ** 2 for x, c in zip(g, centre, strict=True)) <= r * r


def _image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = _sphere((32, 32, 32), (16, 16, 16), 8)
    image = np.where(truth, 100.0, 20.0) + rng.normal(0, 5, truth.shape)
    return image.astype(np.float32), truth


def test_cut_follows_the_intensity_edge_from_an_undersegmented_prior() -> None:
    image, truth = _image()
    prior = _sphere(truth.shape, (16, 16, 16), 5).astype(np.float32)  # too small
    fg = np.zeros_like(truth)
    fg[16, 16, 10:23] = True  # a stroke across the object
    bg = np.zeros_like(truth)
    bg[16, 2:30, 3] = True  # a stroke outside
    out = graphcut(image, prior, fg, bg)
    before = 2 * (prior.astype(bool) & truth).sum() / (prior.astype(bool).sum() + truth.sum())
    after = 2 * (out & truth).sum() / (out.sum() + truth.sum())
    assert before < 0.6
    assert after > 0.95
    assert out[fg].all() and not out[bg].any()


def test_seeds_are_hard_even_against_a_certain_prior() -> None:
    image, truth = _image(1)
    prior = np.zeros(truth.shape, dtype=np.float32)
    fg = np.zeros_like(truth)
    fg[16, 16, 16] = True
    out = graphcut(image, prior, fg, np.zeros_like(truth), params=GraphCutParams(lam=0.0, prior_floor=0.0))
    assert out[16, 16, 16] and out.sum() == 1


def test_refine_label_changes_only_the_region_and_reassigns_removed_voxels() -> None:
    image, truth = _image(2)
    label = np.zeros(truth.shape, dtype=np.uint8)
    label[truth] = 1
    label[0:4, 0:4, 0:4] = 2  # another class far away, outside the region
    leak = _sphere(truth.shape, (16, 16, 27), 3) & ~truth  # false positive of class 1
    label[leak] = 1
    probs = np.stack([(label == v).astype(np.float32) for v in (0, 1, 2)])
    bg = np.zeros_like(truth)
    bg[16, 16, 27:30] = True  # a background stroke through the leak
    out = refine_label(image, probs, label, [0, 1, 2], {0: bg}, params=GraphCutParams(margin_mm=6))
    assert (out[leak] == 0).mean() > 0.9
    assert (out[truth] == 1).mean() > 0.98
    assert (out[0:4, 0:4, 0:4] == 2).all()
    roi = region(bg, (1, 1, 1), 6)
    outside = np.ones(truth.shape, dtype=bool)
    outside[roi] = False
    assert (out[outside] == label[outside]).all()


def test_bad_input_is_refused() -> None:
    image, truth = _image()
    with pytest.raises(ValueError, match="no scribbled voxel"):
        region(np.zeros_like(truth), (1, 1, 1), 5)
    with pytest.raises(ValueError, match="lambda"):
        GraphCutParams(lam=-1)
    probs = np.zeros((2, *truth.shape), dtype=np.float32)
    with pytest.raises(ValueError, match="do(es)? not know"):
        refine_label(image, probs, truth.astype(np.uint8), [0, 1], {3: truth})
