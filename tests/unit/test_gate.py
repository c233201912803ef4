"""The version gate's rules (segloop.loop.gate): paired, with the uncertainty of the comparison."""

from __future__ import annotations

import pytest

from segloop.loop.gate import decide, paired_interval


def test_paired_interval_needs_three_images_and_brackets_the_mean() -> None:
    assert paired_interval([0.1, -0.1]) is None
    lo, hi = paired_interval([0.01, 0.02, 0.03, 0.02])  # type: ignore[misc]
    assert lo < 0.02 < hi and hi - lo < 0.05


def test_safety_gate_accepts_noise_and_refuses_a_clear_drop() -> None:
    old = [0.85, 0.86, 0.84, 0.87]
    # -0.005 on average with spread: within noise -> accepted (the old strict rule refused it)
    noisy = [0.84, 0.87, 0.835, 0.865]
    d = decide(noisy, old)
    assert d.accepted and d.ci95 is not None and d.ci95[0] < 0 < d.ci95[1]
    assert not decide(noisy, old, "strict").accepted
    # every image clearly worse -> refused
    worse = [0.80, 0.81, 0.79, 0.82]
    d = decide(worse, old)
    assert not d.accepted and d.ci95 is not None and d.ci95[1] < 0 and "clearly worse" in d.reason


def test_safety_gate_with_too_few_images_refuses_only_a_collapse() -> None:
    assert decide([0.80], [0.84]).accepted  # -0.04: no interval, not a collapse
    assert not decide([0.70], [0.84]).accepted  # -0.14: collapse
    assert decide([], []).accepted and decide([], []).images == 0


def test_paired_gate_needs_a_gain_beyond_noise() -> None:
    old = [0.80, 0.82, 0.81, 0.79, 0.80]
    assert decide([0.83, 0.85, 0.84, 0.82, 0.83], old, "paired", min_improvement=0.01).accepted
    assert not decide([0.80, 0.83, 0.80, 0.79, 0.81], old, "paired", min_improvement=0.01).accepted


def test_gate_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown version gate"):
        decide([0.5], [0.5], "vote")
    with pytest.raises(ValueError, match="paired scores"):
        decide([0.5, 0.6], [0.5])
