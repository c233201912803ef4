"""Numerics of the emulation reports: paired bootstrap interval, rank correlation, labels to a target."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.loop.statistics import bootstrap_mean_ci, labels_to_target, paired_differences, spearman


def test_bootstrap_interval_contains_the_mean_and_excludes_zero_only_for_a_clear_shift() -> None:
    shifted = [0.010, 0.012, 0.008, 0.011, 0.009]
    ci = bootstrap_mean_ci(shifted)
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(0.01)
    assert 0.008 <= ci["low"] < ci["mean"] < ci["high"] <= 0.012 and ci["excludes_zero"] is True
    noisy = [0.02, -0.03, 0.01, -0.01, 0.005]
    ci = bootstrap_mean_ci(noisy)
    assert ci["low"] < 0 < ci["high"] and ci["excludes_zero"] is False
    assert bootstrap_mean_ci(noisy) == ci  # fixed seed: reproducible
    assert bootstrap_mean_ci([-0.01, -0.02, -0.015])["excludes_zero"] is True


def test_bootstrap_edge_cases() -> None:
    one = bootstrap_mean_ci([0.3, None])
    assert one["n"] == 1 and one["low"] == one["high"] == 0.3 and one["excludes_zero"] is False
    none = bootstrap_mean_ci([None, float("nan")])
    assert none["n"] == 0 and none["mean"] is None
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=1.5)


def test_paired_differences() -> None:
    assert paired_differences([0.8, None, 0.7], [0.75, 0.7, 0.72]) == pytest.approx([0.05, None, -0.02])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        paired_differences([1.0], [1.0, 2.0])


def test_spearman_ranks_with_ties_and_undefined_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64.5]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert spearman([1, 2], [3, 4]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3, float("nan"), 4], [1, 2, 3, 9, 4]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


def test_labels_to_target_interpolates_between_rounds() -> None:
    labelled, dice = [2, 6, 10, 14], [0.5, 0.7, 0.8, 0.85]
    assert labels_to_target(labelled, dice, 0.75) == pytest.approx(8.0)
    assert labels_to_target(labelled, dice, 0.8) == pytest.approx(10.0)
    assert labels_to_target(labelled, dice, 0.4) == pytest.approx(2.0)
    assert labels_to_target(labelled, dice, 0.9) is None
    assert labels_to_target([2, 6, 10], [0.5, 0.8, 0.7], 0.79) == pytest.approx(2 + 0.29 / 0.3 * 4)  # the first crossing
    with pytest.raises(ValueError, match="increase"):
        labels_to_target([2, 2], [0.5, 0.6], 0.55)
