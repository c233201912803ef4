"""Graph-cut refinement of a mask from scribbles: a min-cut on an intensity-aware voxel graph.

The energy is the classic interactive graph cut (Boykov & Jolly 2001), as MONAI Label's
scribbles apps use it (there with a histogram likelihood, Wang et al. 2018, Eq. 5-7):

    E(L) = sum_p U_p(L_p) + lambda * sum_{p~q, L_p != L_q} exp(-(I_p - I_q)^2 / (2 sigma^2)) / dist(p, q)

- unary ``U_p``: ``-log P(fg)`` / ``-log P(bg)`` with ``P(fg) = prior * h_fg / (prior * h_fg +
  (1 - prior) * h_bg)``: ``prior`` the model's current probability of the class, ``h_fg`` /
  ``h_bg`` intensity likelihoods of each side: the mean of the histogram of that side's
  scribbles and the histogram of that side's voxels in the current mask (prior >= 0.5, resp.
  < 0.5, scribbles of the other side left out) — ``bins`` bins, Gaussian-smoothed over 1.5 bins,
  floored at a thousandth of uniform. A stroke alone holds too few voxels to stand for a
  structure (it made the rest of the class improbable); without scribbles of a side, its mask
  voxels alone count;
- hard constraints: scribbled voxels keep their side whatever the cost;
- pairwise: the 6-neighbourhood, ``dist`` the voxel spacing along the axis (mm), ``sigma``
  by default the mean absolute intensity difference between neighbours in the region.

The min-cut is computed by PyMaxflow (Boykov-Kolmogorov) on the region only: the scribbles'
bounding box grown by ``margin_mm``; voxels outside it are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-4
HARD = 1e9


@dataclass(frozen=True)
class GraphCutParams:
    """``lam``: weight of the smoothness term; ``sigma``: intensity scale (None: estimated);
    ``bins``: histogram bins; ``margin_mm``: growth of the scribbles' box into the region;
    ``prior_floor``: the model's probability is clipped to ``[floor, 1 - floor]`` (a softmax is
    nearly 0 or 1 everywhere, which would leave the scribbles no say beyond their own voxels)."""

    lam: float = 2.0
    sigma: float | None = None
    bins: int = 64
    margin_mm: float = 15.0
    prior_floor: float = 0.1

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam}")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if not 2 <= self.bins <= 1024:
            raise ValueError(f"bins must be 2..1024, got {self.bins}")
        if not 0 <= self.margin_mm <= 500:
            raise ValueError(f"margin_mm must be 0..500, got {self.margin_mm}")
        if not 0 <= self.prior_floor < 0.5:
            raise ValueError(f"prior_floor must be in [0, 0.5), got {self.prior_floor}")


def region(seeds: np.ndarray, spacing: Sequence[float], margin_mm: float) -> tuple[slice, slice, slice]:
    """The bounding box of ``seeds`` grown by ``margin_mm`` on each side, clipped to the volume."""
    nz = np.nonzero(seeds)
    if not nz[0].size:
        raise ValueError("no scribbled voxel")
    out = []
    for ax in range(3):
        m = int(np.ceil(margin_mm / float(spacing[ax])))
        out.append(slice(max(0, int(nz[ax].min()) - m), min(seeds.shape[ax], int(nz[ax].max()) + m + 1)))
    return (out[0], out[1], out[2])


def _histogram_likelihood(image: np.ndarray, seeds: np.ndarray, edges: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    counts, _ = np.histogram(image[seeds], bins=edges)
    # a few dozen scribbled voxels fill a 64-bin histogram sparsely: smooth it (1.5 bins), and
    # floor it (a thousandth of uniform) instead of Laplace's +1, which would drown the evidence
    h = gaussian_filter1d(counts.astype(np.float64), 1.5, mode="constant")
    h = h / h.sum() + 1e-3 / len(counts)
    idx = np.clip(np.digitize(image, edges[1:-1]), 0, len(counts) - 1)
    out: np.ndarray = h[idx]
    return out


def foreground_probability(
    image: np.ndarray, prior: np.ndarray, fg: np.ndarray, bg: np.ndarray, bins: int = 64
) -> np.ndarray:
    """``P(fg)`` per voxel: the prior combined with the scribbles' intensity histograms (see the module docstring)."""
    p = np.clip(prior.astype(np.float64), EPS, 1.0 - EPS)
    mask_fg = (prior >= 0.5) & ~bg
    mask_bg = (prior < 0.5) & ~fg
    lo, hi = float(image.min()), float(image.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)

    def likelihood(scribbled: np.ndarray, masked: np.ndarray) -> np.ndarray | None:
        # a stroke holds a few dozen voxels, too few to stand for a structure's intensities
        # alone (a 10-voxel stroke made every other voxel of the class improbable and the cut
        # removed most of it): the scribbles and what the mask has of that side count half each
        parts = [_histogram_likelihood(image, m, edges) for m in (scribbled, masked) if m.any()]
        return None if not parts else np.mean(parts, axis=0)

    h_fg = likelihood(fg, mask_fg)
    h_bg = likelihood(bg, mask_bg)
    if h_fg is not None and h_bg is not None:
        p = p * h_fg / (p * h_fg + (1.0 - p) * h_bg)
    return np.clip(p, EPS, 1.0 - EPS)


def graphcut(
    image: np.ndarray,
    prior: np.ndarray,
    fg: np.ndarray,
    bg: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    params: GraphCutParams | None = None,
) -> np.ndarray:
    """Foreground mask of the min-cut over the whole of ``image`` (call on a region).

    Args:
        image: intensities ``(X, Y, Z)`` (any scale).
        prior: probability of the foreground class ``(X, Y, Z)`` in [0, 1] (0.5: no opinion).
        fg, bg: scribbled voxels (boolean ``(X, Y, Z)``); a voxel in both counts as foreground.
        spacing: voxel size (mm) per axis.
        params: `GraphCutParams`.

    Returns:
        Boolean ``(X, Y, Z)``: True where the cut puts the foreground; every ``fg`` voxel is
        True and every ``bg`` voxel (not also ``fg``) False.
    """
    import maxflow

    params = params or GraphCutParams()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or prior.shape != img.shape or fg.shape != img.shape or bg.shape != img.shape:
        raise ValueError(f"image, prior and scribbles must share one 3D shape (got {img.shape}, {prior.shape}, {fg.shape}, {bg.shape})")
    bg = bg & ~fg
    floor = max(params.prior_floor, EPS)
    p = foreground_probability(img, np.clip(prior, floor, 1.0 - floor), fg, bg, params.bins)
    sigma = params.sigma
    if sigma is None:
        diffs = [np.abs(np.diff(img, axis=a)).mean() for a in range(3) if img.shape[a] > 1]
        sigma = float(np.mean(diffs)) if diffs else 1.0
        sigma = sigma if sigma > 0 else 1.0
    g = maxflow.Graph[float]()
    ids = g.add_grid_nodes(img.shape)
    if params.lam > 0:
        for ax in range(3):
            if img.shape[ax] < 2:
                continue
            d = np.diff(img, axis=ax)
            w = params.lam * np.exp(-(d * d) / (2.0 * sigma * sigma)) / float(spacing[ax])
            weights = np.zeros(img.shape, dtype=np.float64)
            sl: list[slice] = [slice(None)] * 3
            sl[ax] = slice(0, img.shape[ax] - 1)
            weights[tuple(sl)] = w
            structure = np.zeros((3, 3, 3), dtype=np.float64)
            off = [1, 1, 1]
            off[ax] = 2
            structure[tuple(off)] = 1.0
            g.add_grid_edges(ids, weights=weights, structure=structure, symmetric=True)
    source = -np.log(1.0 - p)  # paid when the voxel goes to the background (sink) side
    sink = -np.log(p)
    source[fg], sink[fg] = HARD, 0.0
    source[bg], sink[bg] = 0.0, HARD
    g.add_grid_tedges(ids, source, sink)
    g.maxflow()
    out: np.ndarray = ~g.get_grid_segments(ids)
    return out


def refine_label(
    image: np.ndarray,
    probs: np.ndarray,
    label: np.ndarray,
    class_values: Sequence[int],
    seeds: dict[int, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    params: GraphCutParams | None = None,
) -> np.ndarray:
    """A copy of ``label`` refined by scribbles: one binary cut per class (class c against the rest).

    Args:
        image: intensities ``(X, Y, Z)``.
        probs: the current probabilities ``(C, X, Y, Z)``, channel n = ``class_values[n]``.
        label: the current class values ``(X, Y, Z)``.
        seeds: class value (0: background) -> its scribbled voxels (boolean ``(X, Y, Z)``).
        spacing, params: as for `graphcut`; the region is the box of all seeds + ``margin_mm``.

    The classes cut are those with foreground scribbles, or, with background scribbles only,
    every class present in the region. For class c the seeds of every other value are its
    background. Voxels a cut takes from c get the most probable other class; at the end every
    scribbled voxel holds its scribble's class.

    Raises:
        ValueError: no scribbled voxel, or a scribble class the model does not know.
    """
    from segloop.ml.prompts import reassign

    values = [int(v) for v in class_values]
    unknown = sorted(set(seeds) - set(values))
    if unknown:
        raise ValueError(f"scribbles of classes {unknown} the model does not know ({values})")
    params = params or GraphCutParams()
    shape = label.shape
    everything = np.zeros(shape, dtype=bool)
    for m in seeds.values():
        everything |= m
    roi = region(everything, spacing, params.margin_mm)
    out = label.copy()
    targets = [v for v in seeds if v != 0 and seeds[v].any()]
    if not targets:
        present = set(np.unique(label[roi]).tolist())
        targets = [v for v in values if v != 0 and v in present]
    img = np.asarray(image, dtype=np.float64)[roi]
    sub_probs = probs[(slice(None), *roi)]
    for c in targets:
        fg = seeds[c][roi] if c in seeds else np.zeros(img.shape, dtype=bool)
        bg = np.zeros(img.shape, dtype=bool)
        for v, m in seeds.items():
            if v != c:
                bg |= m[roi]
        cut = graphcut(img, sub_probs[values.index(c)], fg, bg, spacing, params)
        sub = out[roi]
        sub[:] = reassign(sub, sub_probs, values, c, ~cut)
        sub[cut] = c
    for v, m in seeds.items():
        out[m] = v
    return out
