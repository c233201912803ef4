"""The layout at 1280x800 in a real browser: the open image's line stays visible and no panel
clips its content (nothing scrolls sideways, nothing lies right of the window)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow

CLIPPED = """() => {
  const out = [];
  for (const el of document.querySelectorAll('#app *')) {
    if (!el.getClientRects().length) continue;  // not rendered
    const r = el.getBoundingClientRect();
    if (r.right > innerWidth + 1) out.push(`${el.tagName}#${el.id}.${el.className} beyond the window`);
    const cs = getComputedStyle(el);
    if (cs.textOverflow === 'ellipsis') continue;  // shortened on purpose, with a tooltip
    if (['auto', 'scroll', 'hidden'].includes(cs.overflowX) && el.scrollWidth > el.clientWidth + 1)
      out.push(`${el.tagName}#${el.id}.${el.className}: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  return out;
}"""


@pytest.mark.parametrize("size", [(1280, 800), (1366, 768)])
def test_nothing_is_clipped(app: AppPage, size: tuple[int, int]) -> None:
    app.page.set_viewport_size({"width": size[0], "height": size[1]})
    app.open("hippocampus_003")
    info = app.page.locator("#image-info")
    assert info.is_visible()
    assert "hippocampus_003" in info.inner_text() and "final" in info.inner_text()
    assert info.evaluate("e => e.scrollWidth <= e.clientWidth"), "the image line is cut short"
    box = app.page.locator("#gl").bounding_box()
    assert box and box["width"] >= 500 and box["height"] >= 450, box
    for tab in ("edit", "models", "evaluate"):
        app.page.click(f"[data-tab='{tab}']")
        assert app.page.evaluate(CLIPPED) == [], tab
    app.shot(f"layout-{size[0]}x{size[1]}")
