"""Statistics of the emulation reports: plain functions over numbers (numpy/scipy only).

- `bootstrap_mean_ci`: a percentile bootstrap interval of a mean (used for the *paired*
  per-seed difference of a strategy's AUC to random's: resampling the seeds, not the rounds).
- `spearman`: rank correlation with ties (average ranks), None where it is undefined.
- `labels_to_target`: the first labelled count (or fraction) where a learning curve reaches a
  target, linearly interpolated between rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and np.isfinite(float(v))], dtype=float)


def bootstrap_mean_ci(
    values: Sequence[float | None], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``values`` (None/NaN dropped) with a percentile bootstrap interval.

    The values are resampled with replacement ``resamples`` times (a fixed ``seed``: the same
    input gives the same interval). With one value the interval is that value (no spread can be
    estimated: ``n`` says so); with none everything is None.

    Returns:
        ``{"n", "mean", "low", "high", "confidence", "excludes_zero"}``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    a = _finite(values)
    out: dict[str, Any] = {"n": int(a.size), "mean": None, "low": None, "high": None, "confidence": confidence,
                           "excludes_zero": None}
    if a.size == 0:
        return out
    mean = float(a.mean())
    if a.size == 1:
        low = high = mean
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, a.size, size=(resamples, a.size))
        means = a[idx].mean(axis=1)
        alpha = (1.0 - confidence) / 2.0
        low, high = (float(v) for v in np.quantile(means, [alpha, 1.0 - alpha]))
    out.update(mean=mean, low=low, high=high, excludes_zero=bool(a.size > 1 and (low > 0 or high < 0)))
    return out


def paired_differences(mine: Sequence[float | None], other: Sequence[float | None]) -> list[float | None]:
    """``mine[i] - other[i]`` per pair (None where either is missing)."""
    if len(mine) != len(other):
        raise ValueError(f"paired values need the same length, got {len(mine)} and {len(other)}")
    return [None if a is None or b is None else float(a) - float(b) for a, b in zip(mine, other, strict=True)]


def spearman(scores: Sequence[float], errors: Sequence[float]) -> float | None:
    """Spearman rank correlation of two equally long sequences (ties get average ranks).

    None when fewer than 3 pairs or either side is constant (the correlation is undefined).
    """
    x, y = np.asarray(scores, dtype=float), np.asarray(errors, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores {x.shape} and errors {y.shape} must be 1-D and equally long")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def labels_to_target(labelled: Sequence[float], dice: Sequence[float], target: float) -> float | None:
    """The labelled amount at which the curve ``dice(labelled)`` first reaches ``target``.

    Between two rounds the curve is taken as linear (the crossing is interpolated); a curve that
    starts at or above the target gives its first point; one that never reaches it gives None.
    ``labelled`` must increase.
    """
    x, y = np.asarray(labelled, dtype=float), np.asarray(dice, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"labelled {x.shape} and dice {y.shape} must be 1-D and equally long")
    if x.size and np.any(np.diff(x) <= 0):
        raise ValueError("labelled amounts must increase from round to round")
    for k in range(x.size):
        if y[k] >= target:
            if k == 0:
                return float(x[0])
            x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))
    return None
