"""Issue 15's prompts in the web app: box, lasso and scribbles drawn with the mouse on a slice,
each one step of the interactive session (undo / redo on the server, like clicks), saved with
source ``interactive``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


# opaque pixels of the marks canvas (the outline of the prompt being drawn adds to them)
MARK_PIXELS = """() => {
  const c = document.querySelector('#marks'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""


def _path(app: AppPage, points: list[tuple[float, float]], modifier: str | None = None) -> None:
    """Press at the first point, move through the others (canvas fractions), release; the
    prompt's outline is drawn on the marks canvas while the button is down."""
    if modifier:
        app.page.keyboard.down(modifier)
    app.page.mouse.move(*app.canvas_point(*points[0]))
    shown = app.page.evaluate(MARK_PIXELS)
    app.page.mouse.down()
    for p in points[1:]:
        app.page.mouse.move(*app.canvas_point(*p), steps=4)
    assert app.page.evaluate(MARK_PIXELS) > shown, "the outline is drawn while drawing"
    app.page.mouse.up()
    if modifier:
        app.page.keyboard.up(modifier)


def _wait_prompts(app: AppPage, n: int) -> None:
    app.page.wait_for_function("n => document.body.dataset.prompts === String(n)", arg=n, timeout=90_000)


def _wait_counts(app: AppPage, expected: dict[str, Any]) -> None:
    app.page.wait_for_function(
        "e => JSON.stringify(window.segloopDebug.counts()) === JSON.stringify(e)", arg=expected, timeout=60_000)


def _undo_redo(app: AppPage, before: dict[str, int], after: dict[str, int]) -> None:
    """Undo restores the label before the prompt, redo re-applies the prompt's answer."""
    app.key("Control+z")
    _wait_counts(app, before)
    app.key("Control+y")
    _wait_counts(app, after)


def _start(app: AppPage, image: str) -> None:
    app.open(image)
    if not (app.has_feature("putLabel") and app.has_feature("redo")):
        pytest.skip("the server has no session label upload / redo")
    app.page.select_option("#model", "tiny")
    app.key("a")


def test_box_lasso_and_scribble_prompts_undo_redo_and_save(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_007"
    _start(app, image)
    revs_before = len(api.get(f"/images/{image}/labels").json()["items"])
    app.key("2")

    # box: a rectangle dragged on the axial slice
    app.key("x")
    assert app.body("tool") == "box"
    before = app.counts()
    _path(app, [(0.4, 0.4), (0.6, 0.6)])
    _wait_prompts(app, 1)
    after = app.counts()
    assert after != before, "the box prompt changed the label"
    app.shot("prompts-01-box")
    _undo_redo(app, before, after)

    # lasso: a closed contour (a square path) on the same slice; its inside takes the class
    app.key("q")
    assert app.body("tool") == "lasso"
    inside = app.voxel_at(*app.canvas_point(0.5, 0.3))
    before = app.counts()
    _path(app, [(0.44, 0.24), (0.56, 0.24), (0.56, 0.36), (0.44, 0.36)])
    _wait_prompts(app, 2)
    after = app.counts()
    assert after != before and app.value(inside) == 2, "the lasso's inside has the class"
    app.shot("prompts-02-lasso")
    _undo_redo(app, before, after)

    # scribble as model guidance: the stroke's voxels take the class
    app.key("w")
    assert app.body("tool") == "scribble"
    assert app.page.input_value("#scribble-mode") == "guidance"
    on_stroke = app.voxel_at(*app.canvas_point(0.5, 0.75))
    before = app.counts()
    _path(app, [(0.42, 0.75), (0.5, 0.75), (0.58, 0.76)])
    _wait_prompts(app, 3)
    after = app.counts()
    assert after != before and app.value(on_stroke) == 2, "the scribbled voxels have the class"
    app.shot("prompts-03-scribble")
    _undo_redo(app, before, after)
    assert "3 step(s) to undo" in app.page.inner_text("#edit-state")

    app.page.click("#save-draft")
    app.page.wait_for_function(
        "n => document.body.dataset.savedRevision && Number(document.body.dataset.savedRevision) > n", arg=revs_before)
    rev = int(app.body("savedRevision") or 0)
    info = api.get(f"/images/{image}/labels/{rev}/info").json()
    assert info["source"] == "interactive", "the prompts were saved through the session"


def test_graph_cut_scribbles_3d_box_and_errors(app: AppPage) -> None:
    _start(app, "hippocampus_003")
    app.key("1")
    # a box too thin to be a rectangle is refused here, before the server
    app.key("x")
    _path(app, [(0.5, 0.5), (0.5, 0.6)])
    app.page.wait_for_function("() => document.querySelector('#notices').innerText.includes('Box: drag a rectangle')")
    assert app.body("prompts") is None
    # 3-D box: ±N slices around the drawn rectangle (the option box)
    app.page.check("#box-3d")
    app.page.fill("#box-depth", "3")
    before = app.counts()
    _path(app, [(0.42, 0.42), (0.58, 0.58)])
    _wait_prompts(app, 1)
    after = app.counts()
    assert after != before
    # graph cut: a foreground and an Alt+drag background stroke, each one step, with the
    # parameters of the option row (shown for graph cut only; a value out of range is refused here)
    app.key("w")
    assert app.page.locator("#graphcut-opts").is_hidden()
    app.page.select_option("#scribble-mode", "graphcut")
    assert app.page.locator("#graphcut-opts").is_visible()
    app.page.fill("#graphcut-lambda", "-1")
    _path(app, [(0.47, 0.5), (0.53, 0.5)])
    app.page.wait_for_function("() => document.querySelector('#notices').innerText.includes('smoothness must be')")
    assert app.body("prompts") == "1"
    app.page.fill("#graphcut-lambda", "4")
    app.page.fill("#graphcut-margin", "12")
    bodies: list[Any] = []
    app.page.on("request", lambda r: bodies.append(r.post_data_json) if "/scribbles" in r.url else None)
    fg = app.voxel_at(*app.canvas_point(0.5, 0.5))
    _path(app, [(0.47, 0.5), (0.53, 0.5)])
    _wait_prompts(app, 2)
    assert app.value(fg) == 1
    assert bodies and bodies[0]["mode"] == "graphcut" and bodies[0]["graphcut"] == {"lambda": 4, "margin_mm": 12}
    after_fg = app.counts()
    bg = app.voxel_at(*app.canvas_point(0.5, 0.2))
    _path(app, [(0.45, 0.2), (0.55, 0.2)], modifier="Alt")
    _wait_prompts(app, 3)
    assert app.value(bg) == 0
    app.shot("prompts-04-graphcut")
    app.key("Control+z")
    _wait_counts(app, after_fg)
    app.key("Control+z")
    _wait_counts(app, after)
