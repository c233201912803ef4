"""The annotation-effort model: minutes from clicks, reviewed slices and brush strokes."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.loop.effort import (
    BRUSH_STROKE_SECONDS,
    CLICK_SECONDS,
    REVIEW_SLICE_SECONDS,
    EffortModel,
    annotation_effort,
    manual_strokes,
    reviewed_slices,
)


def test_seconds_add_up_from_the_stated_constants() -> None:
    m = EffortModel()
    assert m.seconds(clicks=10) == pytest.approx(10 * CLICK_SECONDS)
    assert m.seconds(clicks=2, strokes=3, reviewed_slices=4) == pytest.approx(
        2 * CLICK_SECONDS + 3 * BRUSH_STROKE_SECONDS + 4 * REVIEW_SLICE_SECONDS)
    assert m.minutes(reviewed_slices=40) == pytest.approx(40 * REVIEW_SLICE_SECONDS / 60)
    assert EffortModel(click_seconds=5.0).seconds(clicks=2) == 10.0
    d = m.describe()
    assert d["click_seconds"] == CLICK_SECONDS and "Bearman" in d["sources"]["click_seconds"]
    assert d["sources"]["review_slice_seconds"] == "assumption"
    with pytest.raises(ValueError, match="click_seconds"):
        EffortModel(click_seconds=-1)
    with pytest.raises(ValueError, match="clicks"):
        m.seconds(clicks=-1)


def test_slices_and_strokes_count_the_structure() -> None:
    ref = np.zeros((4, 4, 10), np.uint8)
    ref[1, 1, 2:5] = 1  # class 1 on slices 2-4
    ref[2, 2, 4:7] = 2  # class 2 on slices 4-6
    saved = np.zeros_like(ref)
    saved[0, 0, 8] = 1  # a false positive on slice 8: a reviewer looks there too
    assert reviewed_slices(saved, ref) == 6  # slices 2..6 and 8
    assert manual_strokes(ref, [1, 2]) == 6  # 3 + 3
    e = annotation_effort(EffortModel(), 3, saved, ref, [1, 2])
    assert e["clicks"] == 3 and e["reviewed_slices"] == 6 and e["manual_strokes"] == 6
    assert e["minutes"] == pytest.approx((3 * CLICK_SECONDS + 6 * REVIEW_SLICE_SECONDS) / 60)
    assert e["manual_minutes"] == pytest.approx((6 * BRUSH_STROKE_SECONDS + 6 * REVIEW_SLICE_SECONDS) / 60)
    with pytest.raises(ValueError, match="does not match"):
        reviewed_slices(saved[:, :, :5], ref)
