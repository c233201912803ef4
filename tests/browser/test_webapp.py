"""The web app's flows in a real browser against a real server (see conftest.py)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.browser.conftest import ROOT, AppPage

pytestmark = pytest.mark.slow


def latest_label(api: httpx.Client, image_id: str, rev: int | str = "latest") -> np.ndarray:
    r = api.get(f"/images/{image_id}/labels/{rev}")
    r.raise_for_status()
    img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    return np.asarray(img.dataobj)


def wait_saved(app: AppPage, after: int | None) -> int:
    app.page.wait_for_function(
        "n => document.body.dataset.savedRevision && Number(document.body.dataset.savedRevision) > n",
        arg=after or 0,
    )
    return int(app.body("savedRevision") or 0)


def test_open_image_click_and_save(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_003"
    app.open(image)
    app.page.wait_for_selector("#revisions tbody tr[data-rev='1']")
    app.shot("01-opened")
    assert "tiny" in app.page.inner_text("#model")
    # positive click of class 1 (key 1, tool P) in the middle of the axial view
    app.key("a")
    app.key("1")
    app.key("p")
    x, y = app.canvas_point(0.5, 0.5)
    app.page.mouse.click(x, y)
    app.page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=60_000)
    vox = [int(v) for v in (app.body("lastClick") or "").split(",")]
    assert len(vox) == 3
    assert app.page.evaluate("v => window.segloopDebug.value(v[0], v[1], v[2])", vox) == 1
    app.shot("02-after-positive-click")
    stats = app.page.evaluate("() => window.segloop.stats")
    (app.shots / "timings.json").write_text(json.dumps(stats))  # open / click round trip / on screen, ms
    print(f"timings (ms): {stats}")
    app.page.click("#save-draft")
    rev = wait_saved(app, 1)
    label = latest_label(api, image)
    assert label[tuple(vox)] == 1, "the saved label has the clicked class at the clicked voxel"
    info = api.get(f"/images/{image}/labels/{rev}/info").json()
    assert info["source"] == "interactive" and info["status"] == "draft" and info["parent"] == 1
    app.shot("03-saved")


def test_brush_undo_redo_save(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_004"
    app.open(image)
    app.key("a")
    app.key("2")
    app.key("b")
    for _ in range(3):
        app.key("]")
    before = app.counts().get("2", 0)
    x0, y0 = app.canvas_point(0.42, 0.45)
    x1, y1 = app.canvas_point(0.58, 0.55)
    app.page.mouse.move(x0, y0)
    app.page.mouse.down()
    app.page.mouse.move(x1, y1, steps=8)
    app.page.mouse.up()
    painted = app.counts().get("2", 0)
    assert painted > before
    app.shot("04-brushed")
    app.key("Control+z")
    app.page.wait_for_function("n => (window.segloopDebug.counts()[2] ?? 0) === n", arg=before)
    app.shot("05-undone")
    app.key("Control+y")
    app.page.wait_for_function("n => (window.segloopDebug.counts()[2] ?? 0) === n", arg=painted)
    # a 3-D sphere stroke with the eraser, then undo it: the 2-D stroke stays
    app.key("s")
    app.key("e")
    app.page.mouse.click(x1, y1)
    assert app.counts().get("2", 0) < painted
    app.key("Control+z")
    app.page.wait_for_function("n => (window.segloopDebug.counts()[2] ?? 0) === n", arg=painted)
    app.key("Control+s")
    rev = wait_saved(app, 1)
    label = latest_label(api, image)
    assert int((label == 2).sum()) == painted
    info = api.get(f"/images/{image}/labels/{rev}/info").json()
    assert info["source"] == "manual" and info["parent"] == 1
    app.shot("06-brush-saved")
    if os.environ.get("SEGLOOP_DOCS_SCREENSHOT"):
        app.key("m")
        app.page.wait_for_timeout(500)
        target = ROOT / "docs" / "images" / "viewer.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(app.shot("viewer"), target)


def _second_client_saves(api: httpx.Client, image: str, base: int) -> int:
    label = latest_label(api, image, base).copy()
    label[label == 1] = 2  # someone relabels anterior as posterior
    img = nib.Nifti1Image(label.astype(np.uint8), affine=_affine(api, image))
    buf = io.BytesIO(gzip.compress(img.to_bytes()))
    r = api.post(f"/images/{image}/labels", files={"file": ("other.nii.gz", buf, "application/gzip")},
                 data={"base_revision": str(base), "status": "draft"})
    assert r.status_code == 201, r.text
    return int(r.json()["revision"])


def _affine(api: httpx.Client, image: str) -> Any:
    return np.asarray(api.get(f"/images/{image}").json()["affine"], dtype=float)


def test_conflict_keep_mine_then_reload(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_006"
    app.open(image)
    app.key("a")
    app.key("1")
    app.key("b")
    theirs = _second_client_saves(api, image, 1)  # r2, saved while the page edits r1
    x, y = app.canvas_point(0.5, 0.5)
    app.page.mouse.click(x, y)
    mine = app.counts().get("1", 0)
    app.page.click("#save-draft")
    app.page.wait_for_selector("#conflict[open]")
    assert f"revision {theirs}" in app.page.inner_text("#conflict-text")
    app.page.click("#conflict-show")
    app.page.wait_for_function("() => document.querySelector('#compare').value.startsWith('rev:')")
    app.shot("07-conflict-dialog")
    app.page.click("#conflict-keep")
    rev = wait_saved(app, theirs)
    info = api.get(f"/images/{image}/labels/{rev}/info").json()
    assert info["parent"] == theirs, "mine was saved as a new revision on top of theirs"
    assert int((latest_label(api, image) == 1).sum()) == mine
    app.shot("08-conflict-kept-mine")

    # second round: another save meanwhile, and this time reload theirs
    theirs2 = _second_client_saves(api, image, rev)
    app.page.mouse.click(*app.canvas_point(0.45, 0.5))
    app.page.click("#save-draft")
    app.page.wait_for_selector("#conflict[open]")
    app.page.click("#conflict-reload")
    app.page.wait_for_function("() => document.body.dataset.dirty === '0'")
    app.page.wait_for_selector(f"#revisions tbody tr.sel[data-rev='{theirs2}']")
    expected = int((latest_label(api, image) == 1).sum())
    assert app.counts().get("1", 0) == expected
    app.shot("09-conflict-reloaded")


def test_training_progress_reaches_done(app: AppPage, api: httpx.Client) -> None:
    app.open("hippocampus_001")
    app.page.click("[data-tab='models']")
    app.page.fill("#tr-name", "browser")
    app.page.fill("#tr-epochs", "2")
    app.page.fill("#tr-steps", "1")
    app.page.fill("#tr-batch", "1")
    app.page.click("#train-form button[type=submit]")
    app.page.wait_for_selector(".job[data-state='running'], .job[data-state='queued']")
    app.page.locator("#chart").scroll_into_view_if_needed()
    app.shot("10-training-started")
    app.page.wait_for_selector(".job.sel[data-state='done']", timeout=240_000)
    app.page.wait_for_function("() => [...document.querySelectorAll('#model option')].some(o => o.value === 'browser')")
    jobs = api.get("/jobs", params={"kind": "train"}).json()["items"]
    assert jobs[0]["state"] == "done" and jobs[0]["params"]["model"] == "browser"
    assert api.get("/models/browser").json()["current_version"] == 1
    app.page.locator("#chart").scroll_into_view_if_needed()
    app.shot("11-training-done")


def test_evaluate_two_revisions(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_004"  # has r1 (reference, final) and r2 (brushed) from the brush test
    revs = api.get(f"/images/{image}/labels").json()["items"]
    if len(revs) < 2:
        pytest.skip("needs the revision saved by test_brush_undo_redo_save")
    app.open(image)
    app.page.click("[data-tab='evaluate']")
    app.page.select_option("#ev-pred", str(revs[-1]["revision"]))
    app.page.select_option("#ev-ref", "1")
    app.page.click("#ev-run")
    app.page.wait_for_selector("#ev-table")
    app.page.wait_for_function("() => document.querySelector('#compare').value.startsWith('eval:')")
    text = app.page.inner_text("#ev-table")
    assert "Anterior" in text and "Posterior" in text
    history = api.get("/evaluations", params={"image_id": image}).json()["items"]
    assert history and history[0]["params"]["revision"] == revs[-1]["revision"]
    assert history[0]["params"]["reference_revision"] == 1
    app.page.wait_for_selector("#ev-history tbody tr[data-eval]")
    app.shot("12-evaluation")


def test_upload_with_progress_and_errors(app: AppPage, api: httpx.Client, tmp_path: Path) -> None:
    app.open("hippocampus_001")
    from tests.browser.conftest import DATA

    good = tmp_path / "hippocampus_008.nii.gz"
    shutil.copy(DATA / "imagesTr" / "hippocampus_008.nii.gz", good)
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"this is not an image")
    before = api.get("/images").json()["total"]
    app.page.set_input_files("#file-input", [str(good), str(bad)])
    app.page.wait_for_selector(".upload .ustate.ok")
    app.page.wait_for_selector(".upload .ustate.err")
    assert "notes.nii.gz" in app.page.inner_text("#uploads")
    app.page.click(".upload .ustate.err button")
    app.shot("13-upload")
    assert api.get("/images").json()["total"] == before + 1
    app.page.wait_for_selector("#worklist tr[data-id='hippocampus_008']")
