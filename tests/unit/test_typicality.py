"""Typical-and-uncovered batch selection (`segloop.activelearning.typicality`) on made-up features."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.activelearning.typicality import kmeans, prepare_features, typicality, typiclust_order


def blobs(sizes: list[int], centres: list[float], dims: int = 4, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, spread, (n, dims)) for n, c in zip(sizes, centres, strict=True)])


def test_prepare_features_standardises_and_reduces() -> None:
    rng = np.random.default_rng(1)
    f = np.column_stack([rng.normal(0, 1000, 30), rng.normal(0, 0.001, 30), np.full(30, 7.0), rng.normal(0, 1, 30)])
    x = prepare_features(f, dims=2)
    assert x.shape == (30, 2)
    # standardised: the dimension of scale 1000 does not dominate the one of scale 0.001 (the constant one is dropped)
    full = prepare_features(f, dims=10)
    assert full.shape == (30, 3)
    assert np.allclose((full**2).sum(axis=1).mean(), 3 * 30 / 30, rtol=0.05)  # total variance of 3 unit-variance dims
    assert prepare_features(np.ones((5, 3))).shape == (5, 1)
    assert prepare_features(np.ones((5, 3)), dims=8).shape[0] == 5
    assert prepare_features(rng.normal(size=(4, 50)), dims=16).shape == (4, 3)  # at most N - 1 components
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        prepare_features(np.ones(5))


def test_kmeans_finds_separated_blobs_reproducibly() -> None:
    x = blobs([10, 6, 4], [0.0, 5.0, -5.0])
    labels = kmeans(x, 3, seed=3)
    groups = [set(labels[:10]), set(labels[10:16]), set(labels[16:])]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    assert np.array_equal(labels, kmeans(x, 3, seed=3))
    assert np.array_equal(kmeans(x, 50), np.arange(20))  # more clusters than points: one each


def test_typicality_is_highest_in_the_dense_centre() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 0.05, (15, 2)), [[3.0, 3.0]]])
    t = typicality(x, neighbours=5)
    assert t.argmin() == 15  # the outlier is the least typical
    assert t[:15].min() > 5 * t[15]
    assert typicality(np.zeros((1, 2))).tolist() == [0.0]


def test_typiclust_takes_typical_images_of_uncovered_clusters_largest_first() -> None:
    x = blobs([30, 20, 10], [0.0, 5.0, -5.0])
    labelled = np.zeros(60, dtype=bool)
    labelled[0] = True  # the largest blob already has a label
    order, typ, rules = typiclust_order(x, labelled, batch=2, n=2)
    assert rules == ["typical", "typical"]
    blob = lambda i: 0 if i < 30 else 1 if i < 50 else 2  # noqa: E731
    assert [blob(i) for i in order] == [1, 2]  # the uncovered blobs, the larger first
    for i in order:  # the most typical member of its blob
        members = [j for j in range(60) if blob(j) == blob(i)]
        assert typ[i] == max(typ[j] for j in members)
    assert typiclust_order(x, labelled, batch=2, n=2)[0] == order  # reproducible
    # asked for more than one batch: every candidate once, never a labelled image
    everything = typiclust_order(x, labelled, batch=2).order
    assert sorted(everything) == list(range(1, 60))
    assert typiclust_order(x, np.ones(60, dtype=bool), batch=2)[0] == []


def test_typiclust_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="do not match"):
        typiclust_order(np.zeros((4, 2)), [False] * 3, batch=1)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        typiclust_order(np.zeros((4, 2)), [False] * 4, batch=0)
    with pytest.raises(ValueError, match="min_cluster must be >= 0"):
        typiclust_order(np.zeros((4, 2)), [False] * 4, batch=1, min_cluster=-1)
    with pytest.raises(ValueError, match="uncertainty"):
        typiclust_order(np.zeros((4, 2)), [False] * 4, batch=1, uncertainty=[0.0, 1.0])


def test_small_clusters_are_skipped_and_uncertainty_takes_over_once_every_large_cluster_is_covered() -> None:
    x = blobs([30, 20, 4], [0.0, 5.0, -5.0])  # the third blob is too small for a density
    labelled = np.zeros(54, dtype=bool)
    labelled[0] = True  # the largest blob has a label
    blob = lambda i: 0 if i < 30 else 1 if i < 50 else 2  # noqa: E731
    # without uncertainty the small blob is skipped while another cluster has candidates
    plain = typiclust_order(x, labelled, batch=2, n=2, min_cluster=5)
    assert plain.rules == ["typical", "typical"] and [blob(i) for i in plain.order] == [1, 0]
    unc = np.zeros(54)
    unc[10] = 3.0  # the most uncertain image sits in the covered blob
    unc[51] = 2.0  # the next in the small blob
    picks = typiclust_order(x, labelled, batch=2, n=3, min_cluster=5, uncertainty=unc)
    assert picks.rules[0] == "typical" and blob(picks.order[0]) == 1  # the uncovered large blob first
    assert picks.rules[1:] == ["uncertain", "uncertain"]  # then no large cluster is uncovered
    assert picks.order[1:] == [10, 51]
    # min_cluster 0 keeps the small blob a cluster to cover: typicality picks there before uncertainty
    no_floor = typiclust_order(x, labelled, batch=2, n=2, min_cluster=0, uncertainty=unc)
    assert no_floor.rules == ["typical", "typical"] and sorted(blob(i) for i in no_floor.order) == [1, 2]


def test_the_bottleneck_is_the_coarsest_map_and_torchscript_is_refused() -> None:
    import torch

    from segloop.activelearning.passes import _BottleneckRecorder

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.MaxPool3d(2), torch.nn.Conv3d(4, 8, 3, padding=1),
                              torch.nn.Upsample(scale_factor=2), torch.nn.Conv3d(8, 2, 1))
    recorder = _BottleneckRecorder(net)
    net(torch.ones(1, 1, 8, 8, 8))
    net(torch.zeros(1, 1, 8, 8, 8))  # a second window: its statistics add up
    recorder.close()
    counts = {e[1]: e[4] for e in recorder._stats.values()}  # voxels per map -> voxels summed
    assert counts[4 * 4 * 4] == 2 * 64  # the coarsest maps are summed over both windows
    assert counts[8 * 8 * 8] == 512  # the full-resolution ones after the first window no more
    feats = recorder.features()
    assert feats.shape == (16,)  # the 8-channel map at half resolution: 8 means, 8 standard deviations
    with torch.no_grad():
        coarse = net[2](net[1](net[0](torch.cat([torch.ones(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8)]))))
    np.testing.assert_allclose(feats[:8], coarse.mean(dim=(0, 2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="TorchScript"):
        _BottleneckRecorder(torch.jit.script(net))
    with pytest.raises(ValueError, match="TorchScript"):  # wrapped, as an imported model's network is
        _BottleneckRecorder(torch.nn.Sequential(torch.jit.script(net)))
