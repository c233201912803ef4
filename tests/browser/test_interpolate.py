"""Slice interpolation in a real browser: a class brushed on two slices eight apart fills the
slices between with shapes that move from one to the other; one undo takes them back."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow

PER_SLICE = """a => {
  const v = window.segloopDebug.viewer, [nx, ny, nz] = v.dims, out = [];
  const n = [nx, ny, nz][a];
  for (let s = 0; s < n; s++) {
    let count = 0, sx = 0;
    for (let k = 0; k < nz; k++) for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) {
      if ([i, j, k][a] !== s) continue;
      if (window.segloopDebug.value(i, j, k) === 1) { count++; sx += i; }
    }
    out.push([count, count ? sx / count : null]);
  }
  return out;
}"""


def test_interpolation_between_two_brushed_slices(app: AppPage, api: httpx.Client) -> None:
    data = np.random.default_rng(1).normal(100, 10, (40, 40, 24)).astype(np.float32)
    body = gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    r = api.post("/images", files={"file": ("interp_body.nii.gz", body, "application/gzip")})
    assert r.status_code == 201, r.text
    image = r.json()["images"][0]["id"]
    app.open(image)
    app.key("a")
    app.key("1")
    app.key("b")
    a, b = app.canvas_point(0.4, 0.5), app.canvas_point(0.6, 0.5)
    app.page.mouse.move(*a)
    start: dict[str, Any] = app.page.evaluate("() => window.segloopDebug.viewer.sliceOf(0)")
    axis, s0 = start["axis"], start["index"]
    app.page.mouse.down()
    app.page.mouse.up()
    for _ in range(8):
        app.key("ArrowUp")
    app.page.mouse.move(*b)
    app.page.mouse.down()
    app.page.mouse.up()
    before = app.page.evaluate(PER_SLICE, axis)
    assert before[s0][0] > 0 and before[s0 + 8][0] > 0
    assert all(c == 0 for c, _ in before[s0 + 1 : s0 + 8])
    app.key("i")
    app.page.wait_for_function("() => document.body.dataset.interpolated")
    after = app.page.evaluate(PER_SLICE, axis)
    assert after[s0] == before[s0] and after[s0 + 8] == before[s0 + 8], "the brushed slices stay as they were"
    area = (before[s0][0] + before[s0 + 8][0]) / 2
    xs = [after[s][1] for s in range(s0, s0 + 9)]
    for s in range(s0 + 1, s0 + 8):
        assert 0.5 * area <= after[s][0] <= 1.5 * area, (s, after[s], area)
    assert all(x1 <= x2 + 0.5 for x1, x2 in zip(xs, xs[1:], strict=False)), xs  # the shape travels from a to b
    assert xs[0] < xs[4] < xs[8]
    assert all(c == 0 for c, _ in after[:s0]) and all(c == 0 for c, _ in after[s0 + 9 :]), "nothing outside the gap"
    app.shot("interpolated")
    app.key("Control+z")
    app.page.wait_for_function(f"() => ({PER_SLICE})({axis})[{s0 + 4}][0] === 0", timeout=30_000)
    assert app.page.evaluate(PER_SLICE, axis)[s0 + 8] == before[s0 + 8], "one undo takes back the interpolation only"
