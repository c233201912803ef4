"""The viewer's pictures in a real browser: the 3-D view shows only the open image's layers."""

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

