"""Active-learning numerics: entropy, MI, variance, disagreement, regions, diversity (known orders)."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.activelearning import scores as S
from segloop.activelearning.diversity import cosine_similarity, diverse_order, image_descriptor

SHAPE = (6, 6, 6)


def probs_with(p_fg: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Two-class probabilities with foreground probability ``p_fg`` everywhere."""
    p = np.full((2, *shape), 0.0, np.float32)
    p[1] = p_fg
    p[0] = 1 - p_fg
    return p


def test_entropy_bounds_and_order() -> None:
    certain, unsure, half = probs_with(0.0), probs_with(0.2), probs_with(0.5)
    assert S.voxel_entropy(certain).max() == pytest.approx(0.0, abs=1e-6)
    assert S.voxel_entropy(half).min() == pytest.approx(1.0, abs=1e-6)  # normalised by log C
    scores = [S.mean_entropy(p) for p in (unsure, certain, half)]
    assert np.argsort(scores)[::-1].tolist() == [2, 0, 1]  # certain ranks last
    three = np.full((3, *SHAPE), 1 / 3, np.float32)
    assert S.mean_entropy(three) == pytest.approx(1.0, abs=1e-5)


def test_entropy_restricted_to_dilated_foreground() -> None:
    p = probs_with(0.0, (12, 12, 12))
    p[1, 5:7, 5:7, 5:7] = 0.6  # small uncertain foreground blob
    p[0] = 1 - p[1]
    whole = S.mean_entropy(p)
    fg = S.mean_entropy(p, foreground_only=True, dilation=0)
    fg_dil = S.mean_entropy(p, foreground_only=True, dilation=1)
    assert fg > fg_dil > whole > 0
    region = S.foreground_region(p, dilation=1)
    assert region is not None and int(region.sum()) == 8 + 6 * 4  # 2^3 cube plus one face layer each side
    # nothing predicted as foreground: the whole volume counts
    assert S.foreground_region(probs_with(0.1)) is None
    assert S.mean_entropy(probs_with(0.1), foreground_only=True) == pytest.approx(S.mean_entropy(probs_with(0.1)))


def test_mutual_information_variance_disagreement() -> None:
    agree = np.stack([probs_with(0.3)] * 4)  # identical passes: uncertain but no epistemic part
    flip = np.stack([probs_with(0.9), probs_with(0.1), probs_with(0.9), probs_with(0.1)])
    assert S.mutual_information(agree).max() == pytest.approx(0.0, abs=1e-6)
    assert S.predictive_variance(agree).max() == pytest.approx(0.0, abs=1e-7)
    assert S.label_disagreement(agree).max() == 0.0
    assert S.mutual_information(flip).mean() > 0.4
    assert S.predictive_variance(flip).mean() == pytest.approx(0.16, abs=1e-5)
    assert S.label_disagreement(flip).mean() == pytest.approx(0.5)
    for metric in ("mi", "variance", "disagreement"):
        assert S.sample_score(flip, metric) > S.sample_score(agree, metric)
    # entropy of the mean counts the aleatoric part too
    assert S.sample_score(agree, "entropy") > 0.8
    with pytest.raises(ValueError, match="unknown metric"):
        S.sample_score(flip, "nope")
    with pytest.raises(ValueError, match="dimensions"):
        S.mutual_information(probs_with(0.5))


def test_diversity_skips_identical_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 20, 12)).astype(np.float32)
    b = rng.normal(size=(16, 20, 12)).astype(np.float32)
    c = np.zeros((16, 20, 12), np.float32)
    c[4:12, 5:15, 3:9] = 5.0
    images = [a, a.copy() * 3.0 + 1.0, b, c]  # 0 and 1 are the same image up to intensity scale
    desc = np.stack([image_descriptor(x) for x in images])
    sim = cosine_similarity(desc)
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert sim[0, 3] < 0.9 and sim[2, 3] < 0.9
    scores = [0.9, 0.89, 0.5, 0.1]
    assert diverse_order(scores, desc, n=2, weight=0.0, duplicate_threshold=1.1) == [0, 1]  # plain ranking
    picked = diverse_order(scores, desc, n=3)
    assert picked[0] == 0 and 1 not in picked
    assert diverse_order(scores, desc)[-1] == 1  # the duplicate comes last, but still comes
    assert sorted(diverse_order(scores, desc)) == [0, 1, 2, 3]
    # constant images all look alike, whatever their value
    assert float(image_descriptor(np.ones((5, 5, 5))) @ image_descriptor(np.full((6, 5, 4), 7.0))) == pytest.approx(1.0)
    # different shapes map to the same descriptor length
    assert image_descriptor(np.zeros((3, 40, 7)) + np.arange(7)).shape == desc.shape[1:]


def test_automatic_pass_feeds_every_extra_channel() -> None:
    """Models that also take the previous mask get zeros for guidance *and* mask (entropy must not crash)."""
    from types import SimpleNamespace

    import torch

    from segloop.activelearning.passes import plain_pass_probabilities

    for extra in (3, 6):  # guidance only / guidance + previous mask, 3 classes
        net = torch.nn.Conv3d(1 + extra, 3, kernel_size=1)
        spec = SimpleNamespace(extra_channels=extra, num_classes=3, patch_size=(8, 8, 8))
        predictor = SimpleNamespace(net=net, spec=spec, device="cpu")
        probs = plain_pass_probabilities(predictor, np.zeros((1, 8, 8, 8), np.float32))  # type: ignore[arg-type]
        assert probs.shape == (3, 8, 8, 8) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def three_class(shape: tuple[int, int, int] = (12, 12, 12)) -> np.ndarray:
    """Background everywhere (certain), a large class-1 block and a small class-2 block."""
    p = np.zeros((3, *shape), np.float32)
    p[0] = 1.0
    p[:, 1:7, 1:7, 1:7] = np.array([0.0, 1.0, 0.0])[:, None, None, None]
    p[:, 9:11, 9:11, 9:11] = np.array([0.0, 0.0, 1.0])[:, None, None, None]
    return p


def test_class_region_score_weighs_each_structure_alike() -> None:
    p = three_class()
    h_large, h_small = p.copy(), p.copy()
    h_large[:, 1:7, 1:7, 1:7] = np.array([0.1, 0.6, 0.3])[:, None, None, None]  # the large class is unsure
    h_small[:, 9:11, 9:11, 9:11] = np.array([0.1, 0.3, 0.6])[:, None, None, None]  # the small class is unsure
    vol = [S.map_score(S.voxel_entropy(q), q, "volume") for q in (h_large, h_small)]
    cls = [S.map_score(S.voxel_entropy(q), q, "class", dilation=0) for q in (h_large, h_small)]
    assert vol[0] > 20 * vol[1]  # a whole-volume mean mostly measures the size of the unsure structure
    assert cls[0] == pytest.approx(cls[1], rel=1e-5)  # per class: the same doubt scores the same
    assert S.class_entropy(h_small, dilation=0) == pytest.approx(cls[1])
    assert S.map_score(S.voxel_entropy(p), p, "class", dilation=0) == pytest.approx(0.0, abs=1e-6)
    missing = p.copy()
    missing[:, 9:11, 9:11, 9:11] = np.array([1.0, 0.0, 0.0])[:, None, None, None]  # class 2 predicted nowhere
    assert S.class_entropy(missing) == pytest.approx(0.5, abs=1e-5)  # (0 + 1) / 2
    regions = S.class_regions(p, dilation=1)
    assert regions[0] is not None and regions[0].sum() == 6**3 + 6 * 36 and regions[1] is not None
    with pytest.raises(ValueError, match="unknown region"):
        S.map_score(S.voxel_entropy(p), p, "organ")


def test_expected_dice_loss_estimates_one_minus_dice() -> None:
    p = three_class()
    assert S.expected_dice_loss(p) == pytest.approx(0.0, abs=1e-6)  # certain: expects its own Dice to be 1
    unsure = p.copy()
    unsure[:, 1:7, 1:7, 1:7] = np.array([0.4, 0.6, 0.0])[:, None, None, None]
    a = S.soft_dice_agreement(unsure)
    assert a[0] == pytest.approx(2 * 0.6 / 1.6) and a[1] == pytest.approx(1.0)
    assert S.expected_dice_loss(unsure) == pytest.approx(1 - (2 * 0.6 / 1.6 + 1) / 2)
    none = np.zeros_like(p)
    none[0] = 1.0
    assert S.soft_dice_agreement(none).tolist() == [1.0, 1.0]  # nothing predicted, nothing probable


def test_pass_dice_disagreement() -> None:
    p = three_class()
    same = np.stack([p, p, p])
    assert S.pass_dice_disagreement(same) == 0.0 and S.sample_score(same, "dice") == 0.0
    shifted = p.copy()
    shifted[:, 1:7, 1:7, 1:7] = np.array([1.0, 0.0, 0.0])[:, None, None, None]
    shifted[:, 2:8, 1:7, 1:7] = np.array([0.0, 1.0, 0.0])[:, None, None, None]
    s = np.stack([p, p, shifted])
    assert 0 < S.pass_dice_disagreement(s) < 0.5
    assert S.sample_score(s, "mi", region="class") >= 0
