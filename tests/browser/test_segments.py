"""The segment list and the outline display in a real browser: a volume per class in mL that
follows edits, per-class visibility and colour as drawn on the canvas, and the label's outline."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def pixels(app: AppPage) -> np.ndarray:
    """The canvas as RGB."""
    return np.asarray(Image.open(io.BytesIO(app.page.locator("#gl").screenshot())).convert("RGB")).astype(int)


def near(img: np.ndarray, color: list[int], tol: int = 60) -> int:
    """Pixels within `tol` (sum of channel differences) of `color`, with a clear tint (not grey)."""
    d = np.abs(img - np.array(color)).sum(axis=2)
    tinted = np.abs(img - img.mean(axis=2, keepdims=True)).sum(axis=2) > 40
    return int(((d < tol) & tinted).sum())


def row_ml(app: AppPage, value: int) -> float:
    text = app.page.inner_text(f"#classes tr[data-value='{value}'] .seg-ml")
    return float(text.replace("mL", "").strip())


def test_segment_volumes_follow_edits(app: AppPage) -> None:
    app.open("hippocampus_006")
    spacing = app.page.evaluate("() => window.segloopDebug.viewer.header.spacing")
    ml_per_voxel = spacing[0] * spacing[1] * spacing[2] / 1000
    counts = app.counts()
    for v in (1, 2):
        app.page.wait_for_function("v => !document.querySelector(`#classes tr[data-value='${v}'] .seg-ml`).textContent.includes('–')", arg=v)
        assert abs(row_ml(app, v) - counts.get(str(v), 0) * ml_per_voxel) < 0.01, v
    before = row_ml(app, 2)
    app.key("a")
    app.key("2")
    assert app.page.locator("#classes tr[data-value='2'].sel").count() == 1, "key 2 chooses the second segment"
    app.key("b")
    for _ in range(4):
        app.key("]")
    a, b = app.canvas_point(0.3, 0.3), app.canvas_point(0.4, 0.35)
    app.page.mouse.move(*a)
    app.page.mouse.down()
    app.page.mouse.move(*b, steps=5)
    app.page.mouse.up()
    expected = app.counts().get("2", 0) * ml_per_voxel
    assert expected > before + 0.005
    app.page.wait_for_function(
        "e => Math.abs(parseFloat(document.querySelector(\"#classes tr[data-value='2'] .seg-ml\").textContent) - e) < 0.01",
        arg=expected)


def test_segment_visibility_colour_and_outline_on_the_canvas(app: AppPage, api: httpx.Client) -> None:
    colors = {c["value"]: c["color"] for c in api.get("/schema").json()["classes"]}
    app.open("hippocampus_001")
    app.key("g")  # the sagittal view shows both classes
    opaque = "e => { e.value = '1'; e.dispatchEvent(new Event('input', { bubbles: true })); }"
    app.page.eval_on_selector("#opacity", opaque)  # the label's own colours, not blended with the image
    app.page.wait_for_timeout(500)
    full = pixels(app)
    n1 = near(full, colors[1])
    assert n1 > 50, "class 1 shows in its colour"
    # hidden: none of its colour left; shown again: back
    app.page.uncheck("#classes tr[data-value='1'] .seg-shown")
    app.page.wait_for_timeout(300)
    assert near(pixels(app), colors[1]) < n1 * 0.05
    assert near(pixels(app), colors[2]) > 0.5 * near(full, colors[2]), "the other class stays"
    app.page.check("#classes tr[data-value='1'] .seg-shown")
    app.page.wait_for_timeout(300)
    assert near(pixels(app), colors[1]) > n1 * 0.9
    # another colour for class 1
    app.page.eval_on_selector("#classes tr[data-value='1'] .seg-color",
                              "e => { e.value = '#00ff00'; e.dispatchEvent(new Event('input', { bubbles: true })); }")
    app.page.wait_for_timeout(300)
    green = pixels(app)
    assert near(green, [0, 200, 0], tol=120) > n1 * 0.5 and near(green, colors[1]) < n1 * 0.1
    # kept in this browser across a reload
    app.page.reload()
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_001'", timeout=60_000)
    assert app.page.input_value("#classes tr[data-value='1'] .seg-color") == "#00ff00"
    app.page.eval_on_selector("#classes tr[data-value='1'] .seg-color",
                              f"e => {{ e.value = '#{''.join(f'{c:02x}' for c in colors[1])}'; "
                              "e.dispatchEvent(new Event('input', { bubbles: true })); }")
    # outline: the border in full colour, far fewer coloured pixels than the fill
    app.key("g")
    app.page.eval_on_selector("#opacity", opaque)
    app.page.wait_for_timeout(300)
    filled = near(pixels(app), colors[1])
    app.page.check("#outline")
    app.page.wait_for_timeout(300)
    outlined = near(pixels(app), colors[1])
    assert 0 < outlined < filled * 0.7, (outlined, filled)
    app.shot("segments-outline")
    app.page.uncheck("#outline")
    app.page.wait_for_timeout(300)
    assert near(pixels(app), colors[1]) > filled * 0.9
