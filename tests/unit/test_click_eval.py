"""Dice after k clicks and NoC@85/90 (segloop.ml.click_eval) on made-up curves and a scripted session."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segloop.ml.click_eval import click_curve, evaluate_clicks, number_of_clicks, summarize_curves


def test_number_of_clicks_is_the_first_k_reaching_the_threshold_capped() -> None:
    curve = np.array([[0.80, 0.91], [0.86, 0.92], [0.89, 0.93], [0.91, 0.95]])
    assert number_of_clicks(curve, 0.85).tolist() == [1, 0]
    assert number_of_clicks(curve, 0.90).tolist() == [3, 0]
    assert number_of_clicks(curve, 0.99).tolist() == [3, 3]  # never: the cap
    assert number_of_clicks(curve, 0.99, cap=20).tolist() == [20, 20]


def test_summary_means_over_images() -> None:
    a = np.array([[0.80, 0.90], [0.90, 0.95]])
    b = np.array([[0.60, 0.70], [0.70, 0.80]])
    s = summarize_curves([a, b], ["x", "y"])
    assert s["images"] == 2 and s["max_clicks"] == 1
    assert s["dice_after"]["0"]["x"] == pytest.approx(0.70) and s["dice_after"]["1"]["mean"] == pytest.approx(0.8375)
    assert s["noc"]["90"]["x"] == pytest.approx(1.0) and s["noc"]["90"]["y"] == pytest.approx(0.5)
    assert s["reached"]["90"] == {"x": 0.5, "y": 0.5}
    with pytest.raises(ValueError, match="class names"):
        summarize_curves([a], ["x"])


class _Session:
    """Starts from an empty mask; each click fills one more slab of its class from the reference."""

    def __init__(self, ref: np.ndarray) -> None:
        self.ref = ref
        self.label = np.zeros_like(ref)
        self.prediction = SimpleNamespace(label=SimpleNamespace(array=self.label.copy()))
        self.seen: list[Any] = []

    def add_clicks(self, clicks: list[Any]) -> Any:
        self.seen.append(clicks)
        for c in clicks:
            z = len(self.seen) - 1
            self.label[:, :, 2 * z : 2 * z + 2][self.ref[:, :, 2 * z : 2 * z + 2] == c.value] = c.value
        self.prediction = SimpleNamespace(label=SimpleNamespace(array=self.label.copy()))
        return self.prediction


class _Predictor:
    def __init__(self, ref: np.ndarray) -> None:
        self.ref = ref
        self.spec = SimpleNamespace(foreground=(1,), name_of=lambda v: "organ")
        self.sessions: list[_Session] = []

    def session(self, image: Any) -> _Session:
        s = _Session(self.ref)
        self.sessions.append(s)
        return s


def test_click_curve_drives_a_session_with_one_click_per_class_and_round() -> None:
    ref = np.zeros((6, 6, 8), np.uint8)
    ref[1:5, 1:5, 0:8] = 1  # 4 slabs of 2 slices: each click recovers one
    pred = _Predictor(ref)
    image = SimpleNamespace(spacing=(1.0, 1.0, 1.0))
    curve = click_curve(pred, image, ref, [1], max_clicks=6)
    assert curve.shape == (7, 1) and curve[0, 0] == 0.0 and curve[4, 0] == pytest.approx(1.0)
    assert np.all(np.diff(curve[:, 0]) >= 0)
    assert len(pred.sessions[0].seen) == 4  # no error left after 4 clicks: no more clicks
    s = evaluate_clicks(pred, [(image, ref)], max_clicks=6)
    # Dice after k slabs of 4: 2k/(k+4): 0.85 needs 3 (0.857), 0.90 needs 4 (1.0)
    assert s["noc"]["85"]["organ"] == 3 and s["noc"]["90"]["organ"] == 4
