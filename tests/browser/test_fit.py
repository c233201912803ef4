"""The model-fit warning in a real browser: an image unlike the model's training images (here
4 mm voxels over 256 mm, against the ~1 mm, ~40 mm hippocampus crops) gets a warning above the
viewer; an image like them does not."""

from __future__ import annotations

import gzip

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def upload_wide_image(api: httpx.Client) -> str:
    data = np.random.default_rng(0).normal(100, 20, (64, 64, 48)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]))
    body = gzip.compress(img.to_bytes())
    r = api.post("/images", files={"file": ("fit_wide_body.nii.gz", body, "application/gzip")})
    assert r.status_code == 201, r.text
    return str(r.json()["images"][0]["id"])


def test_warning_when_the_model_does_not_fit_the_image(app: AppPage, api: httpx.Client) -> None:
    wide = upload_wide_image(api)
    app.open("hippocampus_003")
    app.page.select_option("#model", "tiny")
    app.page.wait_for_function("() => document.body.dataset.fit === 'ok'")
    assert app.page.is_hidden("#fit-warning")
    app.page.click(f"#worklist tr[data-id='{wide}']")
    app.page.wait_for_function("id => document.body.dataset.imageId === id", arg=wide, timeout=60_000)
    app.page.wait_for_function("() => document.body.dataset.fit === 'misfit'")
    text = app.page.inner_text("#fit-warning")
    assert "modality" not in text, "an unknown modality is no reason to warn"
    assert "tiny v" in text and "voxel spacing 4.00×4.00×4.00 mm" in text and "extent 192×256×256 mm" in text
    app.shot("model-fit-warning")
    app.page.click("#worklist tr[data-id='hippocampus_004']")
    app.page.wait_for_function("() => document.body.dataset.fit === 'ok'", timeout=60_000)
    assert app.page.is_hidden("#fit-warning")
