"""Stale or racy state in a real browser: late answers to an earlier worklist choice, a previous
image's evaluation, and the open image and view kept in the address across a reload."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def wait_held(app: AppPage, held: list[Any]) -> None:
    """Until the route handler has caught a request (it runs while Playwright waits)."""
    for _ in range(100):
        if held:
            return
        app.page.wait_for_timeout(100)
    raise AssertionError("the request was not made")


def test_a_late_answer_to_an_earlier_filter_does_not_win(app: AppPage) -> None:
    app.open("hippocampus_001")
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)  # answered only after the later choice is on screen

    app.page.route("**/api/v1/images?*label_state=none*", hold)
    app.page.select_option("#wl-filter", "none")
    wait_held(app, held)
    app.page.select_option("#wl-filter", "")
    app.page.wait_for_function("() => document.querySelectorAll('#worklist tbody tr[data-id]').length >= 5")
    shown = app.page.inner_text("#wl-count")
    for route in held:
        route.continue_()
    app.page.wait_for_timeout(800)
    assert app.page.inner_text("#wl-count") == shown, "the late answer replaced the current list"
    assert app.page.locator("#worklist tbody tr[data-id]").count() >= 5


def test_two_quick_opens_end_on_the_last_image(app: AppPage) -> None:
    app.open("hippocampus_001")
    held: list[Any] = []
    pattern = "**/api/v1/images/hippocampus_003/volume*"
    app.page.route(pattern, lambda route: held.append(route))
    app.page.click("#worklist tr[data-id='hippocampus_003']")
    wait_held(app, held)
    app.page.click("#worklist tr[data-id='hippocampus_006']")
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_006'", timeout=60_000)
    for route in held:
        route.continue_()
    app.page.wait_for_timeout(1500)
    assert app.body("imageId") == "hippocampus_006"
    dims = app.page.evaluate("() => window.segloopDebug.viewer.header.dims")
    assert app.page.evaluate("() => window.segloop.image.id") == "hippocampus_006"
    assert dims == app.page.evaluate("() => window.segloop.image.shape"), "the viewer holds the chosen image"


def test_evaluation_of_the_previous_image_is_cleared(app: AppPage, api: httpx.Client) -> None:
    r = api.post("/evaluations", json={"image_id": "hippocampus_007", "revision": 1, "reference_revision": 1})
    assert r.status_code == 201, r.text
    app.open("hippocampus_007")
    app.page.click("[data-tab='evaluate']")
    app.page.click("#ev-history .show-ev")
    app.page.wait_for_selector("#ev-table")
    app.page.click("#worklist tr[data-id='hippocampus_003']")
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_003'", timeout=60_000)
    assert app.page.locator("#ev-table").count() == 0, "the previous image's evaluation is still shown"


def test_reload_keeps_the_open_image_and_view(app: AppPage) -> None:
    app.open("hippocampus_001")
    app.page.click("#worklist tr[data-id='hippocampus_004']")
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_004'", timeout=60_000)
    app.key("c")
    query = app.page.evaluate("() => Object.fromEntries(new URLSearchParams(location.search))")
    assert query == {"image": "hippocampus_004", "view": "coronal"}
    app.page.reload()
    app.page.wait_for_function("() => document.body.dataset.imageId === 'hippocampus_004'", timeout=60_000)
    assert app.page.evaluate("() => window.segloopDebug.viewer.mode") == "coronal"
    assert app.page.locator("[data-view='coronal'].on").count() == 1
    app.key("m")  # the default layout leaves the address
    assert "view=" not in app.page.evaluate("() => location.search")
