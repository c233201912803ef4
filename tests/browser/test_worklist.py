"""The worklist search in a real browser: the list shows the images whose name (or series
description) contains the text, with * and ? as wildcards, and says when none matches."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow

ROWS = "() => [...document.querySelectorAll('#worklist tbody tr[data-id]')].map(r => r.dataset.id)"


def search(app: AppPage, text: str, expected: list[str]) -> None:
    app.page.fill("#wl-search", text)
    app.page.wait_for_function(f"e => JSON.stringify(({ROWS})()) === JSON.stringify(e)", arg=expected)


def test_worklist_search(app: AppPage, api: httpx.Client) -> None:
    app.open("hippocampus_001")
    everything = app.page.evaluate(ROWS)
    assert len(everything) >= 5
    search(app, "007", ["hippocampus_007"])
    assert app.page.inner_text("#wl-count").endswith("of 1")
    wanted = [im["id"] for im in api.get("/images", params={"description": "HIPPO*_00?"}).json()["items"]]
    assert "hippocampus_003" in wanted
    search(app, "HIPPO*_00?", wanted)
    search(app, "no such image", [])
    assert "No image matches" in app.page.inner_text("#worklist")
    search(app, "", everything)
