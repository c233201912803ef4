"""`segloop plan` as a real subprocess: the fingerprint and plan of a dataset, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.conftest import HIPPO


def test_plan_of_an_msd_dataset(segloop: Callable[..., Any]) -> None:
    r = segloop("plan", "--dataset", HIPPO, "--max-cases", "6", "--json")
    assert r.code == 0, r.err
    out = r.json()
    assert out["fingerprint"]["cases"] == 6 and out["fingerprint"]["modality"] == "MRI"
    assert out["plan"]["spacing"] == [1.0, 1.0, 1.0] and all(p % 8 == 0 for p in out["plan"]["patch_size"])
    assert out["plan"]["intensity"] is None  # MR: robust z-score per image
    sizes = out["fingerprint"]["class_thickness_mm"]  # hippocampus head and body: a few mm thick
    assert set(sizes) == {"1", "2"} and all(3.0 < v < 20.0 for v in sizes.values())
    text = segloop("plan", "--dataset", HIPPO, "--max-cases", "4")
    assert text.code == 0 and "plan: spacing 1x1x1 mm" in text.out and "fingerprint: 4 case(s)" in text.out
    assert "median box (mm) and thickness (mm) per class 1: " in text.out


def test_plan_errors(segloop: Callable[..., Any], tmp_path: Path) -> None:
    r = segloop("plan")
    assert r.code == 2 and "one of --dataset" in r.err
    r = segloop("plan", "--dataset", tmp_path / "nope")
    assert r.code == 2 and "does not exist" in r.err
    r = segloop("plan", "--dataset", tmp_path)
    assert r.code == 2 and "not an MSD dataset folder" in r.err
