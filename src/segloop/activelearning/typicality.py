"""Typical-and-uncovered batch selection over feature vectors (TypiClust; numpy/scipy only).

With few labels, the images that teach a model most are the *typical* ones of the parts of the
data no label covers yet; uncertainty instead picks the atypical, hard ones, which pay off only
once the common cases are learnt (Hacohen, Dekel & Weinshall, *Active learning on a budget:
opposite strategies suit high and low budgets*, ICML 2022). `typiclust_order`:

1. clusters the labelled and candidate images together into ``|labelled| + batch`` clusters
   (k-means, `kmeans`), so each label and each pick gets about one cluster of the data;
2. takes the cluster with the fewest labelled (and already picked) images, the largest first;
3. picks its most typical candidate: the inverse mean distance to its nearest neighbours in
   the cluster (`typicality`); repeats.

Features are standardised per dimension and reduced to their leading principal components
(`prepare_features`) first, so no single large-valued dimension decides the distances.

As in the authors' implementation, clusters of at most ``min_cluster`` images (5 there) hold too
few images for a density and are not picked from. Given an ``uncertainty`` per image, the batch
switches to it once no cluster that is large enough is left without a label: typical images
while the labels leave whole regions of the data uncovered, then the most uncertain ones (the
"TypiClust, then uncertainty" schedule of Doucet et al., *Bridging diversity and uncertainty in
active learning with self-supervised pre-training*, 2024). The switch comes from the data — its
cluster sizes at ``labelled + batch`` clusters — not from a fixed round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

NEIGHBOURS = 20
PCA_DIMS = 16
MIN_CLUSTER = 5  # the authors' MIN_CLUSTER_SIZE: a cluster needs more images than this to be picked from
TYPICAL = "typical"
UNCERTAIN = "uncertain"


class Picks(NamedTuple):
    """`typiclust_order`'s answer: candidate indices in pick order, every point's typicality in its
    cluster ``(N,)``, and which rule chose each pick (`TYPICAL` or `UNCERTAIN`)."""

    order: list[int]
    typicality: np.ndarray
    rules: list[str]


def prepare_features(features: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """Standardise ``(N, D)`` features per dimension and project on the leading ``dims`` principal
    components (at most ``N - 1``); constant dimensions are dropped. Returns ``(N, d)`` float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    n = f.shape[0]
    sd = f.std(axis=0)
    keep = sd > 1e-12
    if n < 2 or not keep.any():
        return np.zeros((n, 1))
    z = (f[:, keep] - f[:, keep].mean(axis=0)) / sd[keep]
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    k = max(1, min(int(dims), n - 1, s.size))
    return u[:, :k] * s[:k]


def kmeans(points: np.ndarray, k: int, seed: int = 0, restarts: int = 10, iterations: int = 100) -> np.ndarray:
    """Cluster labels ``(N,)`` of ``(N, d)`` points into ``k`` clusters: k-means++ seeding and
    Lloyd iterations, the lowest within-cluster sum of squares of ``restarts`` runs (seeded:
    the same input gives the same labels)."""
    x = np.asarray(points, dtype=np.float64)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    if k == n:
        return np.arange(n)
    rng = np.random.default_rng(int(seed))
    best: tuple[float, np.ndarray] | None = None
    for _ in range(max(1, restarts)):
        centres = [x[int(rng.integers(n))]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            total = float(d2.sum())
            idx = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
            centres.append(x[idx])
        c = np.asarray(centres)
        labels = np.zeros(n, dtype=int)
        for it in range(iterations):
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            new = d.argmin(axis=1)
            if it and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    c[j] = members.mean(axis=0)
                else:  # an empty cluster takes the point farthest from its centre
                    far = int(d[np.arange(n), labels].argmax())
                    c[j] = x[far]
                    labels[far] = j
        inertia = float(((x - c[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels.copy())
    assert best is not None
    return best[1]


def typicality(points: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """``(N,)`` inverse mean Euclidean distance of each point to its ``min(neighbours, N - 1)``
    nearest other points (0 for a single point)."""
    x = np.asarray(points, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return np.zeros(n)
    d = np.sqrt(((x[:, None, :] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    k = max(1, min(int(neighbours), n - 1))
    nearest = np.sort(d, axis=1)[:, :k]
    return 1.0 / (nearest.mean(axis=1) + 1e-12)


def typiclust_order(
    features: np.ndarray,
    labelled: Sequence[bool],
    batch: int,
    n: int | None = None,
    seed: int = 0,
    neighbours: int = NEIGHBOURS,
    dims: int = PCA_DIMS,
    min_cluster: int = 0,
    uncertainty: Sequence[float] | np.ndarray | None = None,
) -> Picks:
    """The candidates to label, in pick order, each point's typicality in its cluster, and the rule
    of each pick.

    Args:
        features: ``(N, D)`` one vector per image, labelled and candidates together.
        labelled: ``(N,)`` True for images that already have a label (never picked).
        batch: images per selection round; the clusters are ``labelled + batch``.
        n: how many to pick (default every candidate; after ``batch`` picks the clusters
            with the fewest picks so far come first again).
        seed: k-means seed.
        min_cluster: clusters of at most this many images (labelled ones included) are not
            picked from for typicality; if no other cluster has a candidate left, they are
            (without ``uncertainty``).
        uncertainty: ``(N,)`` a score per image, higher = more uncertain. Given, typicality picks
            only from clusters without a label or earlier pick, and once no such cluster larger
            than ``min_cluster`` is left, the remaining picks are the most uncertain candidates.

    Returns:
        `Picks` ``(order, typicality, rules)``.
    """
    lab = np.asarray(labelled, dtype=bool)
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] != lab.shape[0]:
        raise ValueError(f"features {f.shape} do not match {lab.shape[0]} labelled flags")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if min_cluster < 0:
        raise ValueError(f"min_cluster must be >= 0, got {min_cluster}")
    unc: np.ndarray | None = None
    if uncertainty is not None:
        unc = np.asarray(uncertainty, dtype=np.float64)
        if unc.shape != lab.shape:
            raise ValueError(f"uncertainty {unc.shape} does not match {lab.shape[0]} labelled flags")
        unc = np.where(np.isfinite(unc), unc, -np.inf)
    candidates = np.flatnonzero(~lab)
    n = len(candidates) if n is None else max(0, min(int(n), len(candidates)))
    if n == 0:
        return Picks([], np.zeros(f.shape[0]), [])
    x = prepare_features(f, dims)
    clusters = kmeans(x, int(lab.sum()) + int(batch), seed=seed)
    typ = np.zeros(f.shape[0])
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        typ[members] = typicality(x[members], neighbours)
    covered = np.bincount(clusters[lab], minlength=int(clusters.max()) + 1).astype(int)
    sizes = np.bincount(clusters, minlength=covered.size)
    free = ~lab
    order: list[int] = []
    rules: list[str] = []
    for _ in range(n):
        open_clusters = [c for c in range(covered.size) if free[clusters == c].any()]
        typical = [c for c in open_clusters if sizes[c] > min_cluster]
        if unc is not None:
            typical = [c for c in typical if covered[c] == 0]
        elif not typical:
            typical = open_clusters
        if typical:
            # fewest labels first, then the largest cluster, then the lowest cluster number (stable)
            c = min(typical, key=lambda j: (covered[j], -sizes[j], j))
            members = np.flatnonzero((clusters == c) & free)
            pick, rule = int(members[np.argmax(typ[members])]), TYPICAL  # first index wins ties
        else:  # every sizeable region holds a label: the most uncertain candidate
            assert unc is not None
            left = np.flatnonzero(free)
            pick, rule = int(left[np.argmax(unc[left])]), UNCERTAIN
        order.append(pick)
        rules.append(rule)
        free[pick] = False
        covered[clusters[pick]] += 1
    return Picks(order, typ, rules)
