"""The viewer's pictures in a real browser: the 3-D view shows only the open image's layers, and
label edits in the four-view layout do not ray-cast the 3-D tile on every frame."""

from __future__ import annotations

import io
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
    # a stroke through the crosshair in the axial tile (so that every tile shows it), of a class
    # the voxel there does not have
    x, y = crosshair_in_axial(app)
    app.key(other_class(app, x, y))
    app.key("b")
    frames = "() => ({...window.segloopDebug.viewer.frames})"
    picture = settled_picture(app)
    before = app.page.evaluate(frames)
    pts = [(x - 8, y), (x, y), (x + 8, y)]
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
    app.page.wait_for_function("n => window.segloopDebug.viewer.frames.full3D > n", arg=during["full3D"], timeout=30_000)
    assert_every_tile_changed_and_nothing_stale(app, picture)


FRAMES = "() => ({...window.segloopDebug.viewer.frames})"


def tile_rects(app: AppPage) -> dict[int, tuple[float, float, float, float]]:
    """Every tile of the layout (0 axial, 1 coronal, 2 sagittal, 4 the 3-D view): x, y, w, h in CSS pixels of the canvas."""
    rects: list[list[float]] = app.page.evaluate("""() => {
        const v = window.segloopDebug.viewer;
        const dpr = v.nv.uiData.dpr || window.devicePixelRatio || 1;
        const out = v.tiles().map((t) => [t.axCorSag, t.x, t.y, t.w, t.h]);
        if (v.tile3DAt) out.push([4, ...v.tile3DAt.map((c) => c / dpr)]);
        return out;
    }""")
    return {int(r[0]): (r[1], r[2], r[3], r[4]) for r in rects}


def crops(png: bytes, rects: dict[int, tuple[float, float, float, float]]) -> dict[int, bytes]:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return {k: img.crop((round(x), round(y), round(x + w), round(y + h))).tobytes() for k, (x, y, w, h) in rects.items()}


def settled_picture(app: AppPage) -> bytes:
    """The canvas once no 3-D ray-cast is owed and the picture no longer changes."""
    app.page.wait_for_function("() => !window.segloopDebug.viewer.lazy3D.pending", timeout=20_000)
    return steady_picture(app)


def fresh_picture(app: AppPage) -> bytes:
    """The canvas drawn from scratch: the whole label uploaded again and every tile (3-D included) drawn anew."""
    app.page.evaluate("""async () => {
        const v = window.segloopDebug.viewer;
        const n = v.frames.full3D;
        v.touchAll();
        v.flushNow();
        v.nv.drawScene();
        if (v.frames.full3D === n) throw new Error('the 3-D tile was not drawn anew');
        await v.presented();
    }""")
    return steady_picture(app)


def crosshair_in_axial(app: AppPage) -> tuple[float, float]:
    """Page position of the crosshair in the axial tile (its voxel lies in every 2-D tile's slice)."""
    p = app.page.evaluate("""() => {
        const v = window.segloopDebug.viewer;
        return v.project(v.voxToMM(v.crosshairVox())).find((q) => q.axCorSag === 0);
    }""")
    box = app.page.locator("#gl").bounding_box()
    assert p and box
    return box["x"] + p["x"], box["y"] + p["y"]


def other_class(app: AppPage, x: float, y: float) -> str:
    """The class key (1 or 2) whose class the voxel under (x, y) does not have yet."""
    return "2" if app.value(app.voxel_at(x, y)) == 1 else "1"


def assert_every_tile_changed_and_nothing_stale(app: AppPage, before: bytes) -> None:
    rects = tile_rects(app)
    assert sorted(rects) == [0, 1, 2, 4], rects
    final = settled_picture(app)
    changed = crops(final, rects)
    old = crops(before, rects)
    assert all(changed[k] != old[k] for k in rects), [k for k in rects if changed[k] == old[k]]
    assert final == fresh_picture(app), "a tile still shows an older label than a fresh redraw"


def test_click_in_four_views_is_not_held_up_by_the_3d_tile_and_ends_everywhere(app: AppPage) -> None:
    app.open("hippocampus_004")
    assert app.page.evaluate("() => window.segloopDebug.viewer.mode") == "multi"
    x, y = crosshair_in_axial(app)
    app.key(other_class(app, x, y))
    app.key("p")
    before = settled_picture(app)
    f0 = app.page.evaluate(FRAMES)
    app.page.mouse.click(x, y)
    # the frames drawn by the time the mask is shown: the click's release did not make NiiVue
    # ray-cast the 3-D tile (it redraws everything on mouse-up), the mask came with the cached tile
    shown = app.page.wait_for_function(
        "n => Number(document.body.dataset.clicks ?? 0) > 0 && ({...window.segloopDebug.viewer.frames})", arg=0,
        polling=10, timeout=60_000).json_value()
    assert shown["full3D"] == f0["full3D"], (f0, shown)
    assert shown["reused3D"] > f0["reused3D"] and shown["boxUploads"] > f0["boxUploads"]
    assert_every_tile_changed_and_nothing_stale(app, before)


def test_stroke_and_click_with_a_slow_answer_in_four_views_end_everywhere(app: AppPage) -> None:
    app.open("hippocampus_006")
    x, y = crosshair_in_axial(app)
    app.key(other_class(app, x, y))
    before = settled_picture(app)
    # the server's answer to the click comes 1.5 s late; the 3-D tile would catch up 0.4 s after
    # editing pauses (time enough to go from the stroke to the click)
    app.page.evaluate("""() => {
        window.segloopDebug.viewer.lazy3D.delayMs = 400;
        const f = window.fetch;
        window.fetch = (u, init) => String(u).includes('/clicks')
            ? new Promise((r) => setTimeout(r, 1500)).then(() => f(u, init)) : f(u, init);
    }""")
    app.key("b")
    app.page.mouse.move(x - 8, y)
    app.page.mouse.down()
    app.page.mouse.move(x + 8, y, steps=4)
    app.page.mouse.up()
    app.key("p")
    f0 = app.page.evaluate(FRAMES)
    app.page.mouse.click(x, y + 3)
    time.sleep(1.0)
    # the stroke's push and the click are on their way: the 3-D tile, owed a ray-cast since the
    # stroke, waits for them instead of delaying them
    waiting = app.page.evaluate("""() => ({ ...window.segloopDebug.viewer.frames,
        pending: window.segloopDebug.viewer.lazy3D.pending, clicks: Number(document.body.dataset.clicks ?? 0) })""")
    assert waiting["clicks"] == 0 and waiting["pending"], waiting
    assert waiting["full3D"] == f0["full3D"], (f0, waiting)
    app.page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=60_000)
    assert_every_tile_changed_and_nothing_stale(app, before)
