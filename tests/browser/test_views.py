"""The viewer's pictures in a real browser: the 3-D view shows only the open image's layers, and
label edits in the four-view layout do not ray-cast the 3-D tile on every frame."""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def open_from_worklist(app: AppPage, image_id: str) -> None:
    """Open another image in the same page (no reload: whatever the last image left stays in memory)."""
    app.page.click(f"#worklist tr[data-id='{image_id}']")
    app.page.wait_for_function("id => document.body.dataset.imageId === id", arg=image_id, timeout=60_000)


def steady_picture(app: AppPage) -> bytes:
    """The canvas once two pictures 0.4 s apart agree (the 3-D view may catch up lazily)."""
    last = b""
    for _ in range(20):
        time.sleep(0.4)
        shot: bytes = app.page.locator("#gl").screenshot()
        if shot == last:
            return shot
        last = shot
    raise AssertionError("the canvas did not settle")


def test_3d_view_shows_no_layer_of_an_earlier_image(app: AppPage) -> None:
    app.open("hippocampus_003")
    app.page.click("[data-view='render']")
    fresh = steady_picture(app)
    # another image with its reference overlay shown, then back: the overlay must not linger
    open_from_worklist(app, "hippocampus_001")
    app.key("o")
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference'")
    with_overlay = steady_picture(app)
    assert with_overlay != fresh
    open_from_worklist(app, "hippocampus_003")
    assert steady_picture(app) == fresh, "the 3-D view shows voxels of the earlier image's overlay"


def test_3d_view_drops_an_overlay_switched_off(app: AppPage) -> None:
    app.open("hippocampus_006")
    app.page.click("[data-view='render']")
    plain = steady_picture(app)
    app.key("o")
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference'")
    assert steady_picture(app) != plain, "the overlay shows in 3-D"
    app.key("o")
    app.page.wait_for_function("() => (document.body.dataset.overlays ?? '') === ''")
    assert steady_picture(app) == plain, "the switched-off overlay still shows in 3-D"


def test_brush_in_four_views_reuses_the_3d_tile_then_catches_up(app: AppPage) -> None:
    app.open("hippocampus_007")
    assert app.page.evaluate("() => window.segloopDebug.viewer.mode") == "multi"
    app.key("b")
    frames = "() => ({...window.segloopDebug.viewer.frames})"
    time.sleep(1.0)
    before = app.page.evaluate(frames)
    # a stroke across the middle of the axial tile
    tile = app.page.evaluate("() => window.segloopDebug.viewer.tiles().find(t => t.axCorSag === 0)")
    box = app.page.locator("#gl").bounding_box()
    assert tile and box
    y = box["y"] + tile["y"] + tile["h"] / 2
    pts = [(box["x"] + tile["x"] + tile["w"] * f, y) for f in (0.45, 0.5, 0.55)]
    assert all(app.page.evaluate("p => window.segloopDebug.voxelAt(p[0], p[1])", list(p)) for p in pts)
    app.page.mouse.move(*pts[0])
    app.page.mouse.down()
    for p in pts[1:]:
        app.page.mouse.move(*p, steps=4)
    app.page.mouse.up()
    during = app.page.evaluate(frames)
    assert during["boxUploads"] > before["boxUploads"], "the changed box is uploaded"
    assert during["fullUploads"] == before["fullUploads"], "no whole-volume upload for a stroke"
    assert during["reused3D"] > before["reused3D"], "the 3-D tile came from its cache while painting"
    assert during["full3D"] - before["full3D"] <= 1
    app.page.wait_for_function("n => window.segloopDebug.viewer.frames.full3D > n", arg=during["full3D"], timeout=10_000)
