"""The viewer's marks and navigation in a real browser: click markers that follow undo, rulers,
view keys, arrow-key slice scrolling, Shift-drag window/level and the threshold-limited brush."""

from __future__ import annotations

import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def _drag(app: AppPage, a: tuple[float, float], b: tuple[float, float], shift: bool = False) -> None:
    if shift:
        app.page.keyboard.down("Shift")
    app.page.mouse.move(*a)
    app.page.mouse.down()
    app.page.mouse.move(*b, steps=6)
    app.page.mouse.up()
    if shift:
        app.page.keyboard.up("Shift")


MARK_PIXELS = """() => {
  const v = window.segloopDebug.viewer, vox = document.body.dataset.lastClick.split(',').map(Number);
  const c = document.querySelector('#marks'), g = c.getContext('2d'), dpr = c.width / c.clientWidth;
  return v.project(v.voxToMM(vox)).filter(p => p.dist < 0.5)
    .map(p => [p.axCorSag, g.getImageData(Math.round(p.x * dpr), Math.round(p.y * dpr), 1, 1).data[3]]);
}"""
MARK_ALPHA = f"() => ({MARK_PIXELS})().map(p => p[1])"


def test_click_markers_follow_undo_and_redo(app: AppPage) -> None:
    app.open("hippocampus_007")
    app.key("a")
    app.key("1")
    app.key("p")
    app.page.mouse.click(*app.canvas_point(0.5, 0.5))
    app.page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=60_000)
    app.page.wait_for_function("() => document.body.dataset.markers === '1'")
    app.shot("marks-01-click-marker")
    # drawn where the click was, in every tile showing its slice (the four-view layout too)
    app.key("m")
    app.page.evaluate("() => window.segloopDebug.viewer.goTo(document.body.dataset.lastClick.split(',').map(Number))")
    app.page.wait_for_timeout(300)
    drawn = app.page.evaluate(MARK_PIXELS)
    assert len(drawn) == 3 and all(alpha > 0 for _, alpha in drawn), drawn
    app.page.uncheck("#show-clicks")  # the markers can be hidden
    assert app.page.evaluate(MARK_ALPHA) == [0, 0, 0]
    app.page.check("#show-clicks")
    app.key("Control+z")
    app.page.wait_for_function("() => document.body.dataset.markers === '0'", timeout=60_000)
    app.key("Control+y")
    app.page.wait_for_function("() => document.body.dataset.markers === '1'", timeout=60_000)


def test_ruler_measures_and_escape_clears(app: AppPage) -> None:
    app.open("hippocampus_001")
    app.key("a")
    app.key("u")
    assert app.body("tool") == "ruler"
    a, b = app.canvas_point(0.4, 0.5), app.canvas_point(0.6, 0.5)
    va, vb = app.voxel_at(*a), app.voxel_at(*b)
    _drag(app, a, b)
    app.page.wait_for_function("() => document.body.dataset.rulers === '1'")
    text = app.page.inner_text("#rulers")
    mm = float(text.split("mm")[0])
    # Task04 is 1 mm isotropic: the length is the voxel distance of the two ends (± a voxel)
    expected = sum((p - q) ** 2 for p, q in zip(va, vb, strict=True)) ** 0.5
    assert expected > 2 and abs(mm - expected) <= 1.5, (mm, expected)
    _drag(app, app.canvas_point(0.5, 0.4), app.canvas_point(0.5, 0.6))
    app.page.wait_for_function("() => document.body.dataset.rulers === '2'")
    app.shot("marks-02-rulers")
    app.key("Escape")
    app.page.wait_for_function("() => document.body.dataset.rulers === '0'")
    assert app.page.inner_text("#rulers").strip() == ""
    # a measurement stays with its image: another image starts without it
    _drag(app, a, b)
    app.page.wait_for_function("() => document.body.dataset.rulers === '1'")
    app.page.click("#worklist tr[data-id='hippocampus_003']")
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_003'", timeout=60_000)
    assert app.body("rulers") == "0" and app.page.inner_text("#rulers").strip() == ""
    assert app.page.evaluate("() => window.segloopDebug.viewer.nv.document.completedMeasurements.length") == 0
    # measuring does not edit the label
    assert not app.page.evaluate("() => window.segloopDebug.dirty()")


def test_view_keys_and_arrow_slice_scroll(app: AppPage) -> None:
    app.open("hippocampus_003")
    mode = "() => window.segloopDebug.viewer.mode"
    app.key("d")
    assert app.page.evaluate(mode) == "render"
    app.key("a")
    assert app.page.evaluate(mode) == "axial"
    app.page.mouse.move(*app.canvas_point(0.5, 0.5))  # the tile under the mouse scrolls
    # NiiVue's own hotkeys are off: V (its "cycle the view") and C (its clip plane) change nothing
    app.key("v")
    app.key("c")
    app.key("a")
    assert app.page.evaluate("() => window.segloopDebug.viewer.nv.opts.sliceType") == 0  # NiiVue's axial
    assert app.page.evaluate("() => window.segloopDebug.viewer.nv.scene.clipPlaneDepthAziElevs[0][0]") > 1
    before = app.page.evaluate("() => window.segloopDebug.viewer.sliceOf(0)")
    assert before and before["count"] > 3
    app.key("ArrowUp")
    app.key("ArrowUp")
    up = app.page.evaluate("() => window.segloopDebug.viewer.sliceOf(0)")
    assert up["index"] == min(before["count"] - 1, before["index"] + 2)
    app.key("ArrowDown")
    down = app.page.evaluate("() => window.segloopDebug.viewer.sliceOf(0)")
    assert down["index"] == up["index"] - 1


def test_shift_drag_changes_window_level(app: AppPage) -> None:
    app.open("hippocampus_004")
    app.key("a")
    app.key("v")
    before = app.page.evaluate("() => window.segloopDebug.viewer.window()")
    _drag(app, app.canvas_point(0.5, 0.5), app.canvas_point(0.65, 0.35), shift=True)
    after = app.page.evaluate("() => window.segloopDebug.viewer.window()")
    assert (after["center"], after["width"]) != (before["center"], before["width"])
    # the toolbar fields follow the drag
    assert abs(float(app.page.input_value("#wl-width")) - after["width"]) <= 1e-3 * max(1.0, after["width"])
    assert not app.page.evaluate("() => window.segloopDebug.dirty()"), "window/level is not an edit"


def test_threshold_limited_brush_paints_only_the_range(app: AppPage) -> None:
    app.open("hippocampus_006")
    app.key("a")
    app.key("2")
    app.key("b")
    before = app.counts().get("2", 0)
    # a range no voxel lies in: the stroke paints nothing
    app.page.check("#brush-thr")
    app.page.fill("#brush-thr-lo", "1e9")
    app.page.fill("#brush-thr-hi", "2e9")
    app.page.dispatch_event("#brush-thr-hi", "change")
    _drag(app, app.canvas_point(0.45, 0.5), app.canvas_point(0.55, 0.5))
    assert app.counts().get("2", 0) == before
    # without the limit the same stroke paints
    app.page.uncheck("#brush-thr")
    _drag(app, app.canvas_point(0.45, 0.5), app.canvas_point(0.55, 0.5))
    assert app.counts().get("2", 0) > before


def test_right_and_middle_drag_pan_and_the_wheel_scrolls(app: AppPage) -> None:
    app.open("hippocampus_001")
    app.key("a")
    app.key("b")  # even with an editing tool chosen
    pan = "() => Array.from(window.segloopDebug.viewer.nv.scene.pan2Dxyzmm).slice(0, 3)"
    cross = "() => window.segloopDebug.viewer.crosshairVox()"
    counts, at = app.counts(), app.page.evaluate(cross)
    for button, to in (("right", (0.6, 0.6)), ("middle", (0.45, 0.4))):
        p0 = app.page.evaluate(pan)
        app.page.mouse.move(*app.canvas_point(0.5, 0.5))
        app.page.mouse.down(button=button)
        app.page.mouse.move(*app.canvas_point(*to), steps=5)
        app.page.mouse.up(button=button)
        p1 = app.page.evaluate(pan)
        assert max(abs(a - b) for a, b in zip(p0, p1, strict=True)) > 1, (button, p0, p1)
    assert app.page.evaluate(cross) == at, "panning does not move the crosshair"
    assert app.counts() == counts, "panning does not paint"
    before = app.page.evaluate("() => window.segloopDebug.viewer.sliceOf(0)")
    app.page.mouse.move(*app.canvas_point(0.5, 0.5))
    app.page.mouse.wheel(0, -120)
    app.page.wait_for_function("n => window.segloopDebug.viewer.sliceOf(0).index === n",
                               arg=min(before["count"] - 1, before["index"] + 1))
