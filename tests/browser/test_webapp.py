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
    if os.environ.get("SEGLOOP_DOCS_SCREENSHOT"):  # README's picture of the viewer
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
    app.page.wait_for_function(f"() => (document.body.dataset.overlays ?? '').includes('reference')"
                               f" && document.querySelector('#ov-reference').value === 'rev:{theirs}'")
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
    app.page.wait_for_function("() => (document.body.dataset.overlays ?? '').includes('discrepancy')")
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


def _stroke(app: AppPage, a: tuple[float, float], b: tuple[float, float]) -> None:
    app.page.mouse.move(*a)
    app.page.mouse.down()
    app.page.mouse.move(*b, steps=6)
    app.page.mouse.up()


def test_brush_then_click_then_save_is_one_interactive_revision(app: AppPage, api: httpx.Client) -> None:
    """Brushed voxels enter the interactive session, the click refines on top of them, and the
    save is one revision with source ``interactive`` holding both."""
    image = "hippocampus_007"
    app.open(image)
    if not app.has_feature("putLabel"):
        pytest.skip("the server has no PUT /sessions/{id}/label")
    revs_before = len(api.get(f"/images/{image}/labels").json()["items"])
    app.page.select_option("#model", "tiny")  # 16^3 click boxes (not the training test's model)
    app.key("a")
    app.key("2")
    app.key("b")
    # brush near the top of the axial view and click near the bottom: further apart than the
    # 16^3 box a click of the tiny model changes
    top = app.canvas_point(0.45, 0.1), app.canvas_point(0.55, 0.1)
    brushed = app.voxel_at(*app.canvas_point(0.5, 0.1))
    _stroke(app, *top)
    assert app.value(brushed) == 2
    app.key("1")
    app.key("p")
    app.page.mouse.click(*app.canvas_point(0.5, 0.88))
    app.page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=60_000)
    clicked = [int(v) for v in (app.body("lastClick") or "").split(",")]
    assert max(abs(a - b) for a, b in zip(brushed, clicked, strict=True)) > 8
    assert app.value(clicked) == 1 and app.value(brushed) == 2
    app.shot("14-brush-then-click")
    app.page.click("#save-draft")
    rev = wait_saved(app, revs_before)
    info = api.get(f"/images/{image}/labels/{rev}/info").json()
    assert info["source"] == "interactive", "brush + click saved through the session"
    assert info["parent"] == revs_before
    assert len(api.get(f"/images/{image}/labels").json()["items"]) == revs_before + 1
    label = latest_label(api, image)
    assert label[tuple(brushed)] == 2, "the brushed voxels are in the saved revision"
    assert label[tuple(clicked)] == 1, "the click's class is in the saved revision"


def test_undo_redo_of_clicks_and_pushed_strokes(app: AppPage, api: httpx.Client) -> None:
    """Undo and redo go through the session (real redo, not a repeated click), for clicks and
    for strokes pushed into the session alike; the session holds what is shown."""
    image = "hippocampus_001"
    app.open(image)
    if not (app.has_feature("putLabel") and app.has_feature("redo")):
        pytest.skip("the server has no session label upload / redo")
    app.page.select_option("#model", "tiny")
    app.key("a")
    app.key("1")
    app.key("p")
    start = app.counts()
    app.page.mouse.click(*app.canvas_point(0.5, 0.5))
    app.page.wait_for_function("() => document.body.dataset.clicks === '1'", timeout=60_000)
    after_click = app.counts()
    app.key("2")
    app.key("b")
    app.page.evaluate("""() => {  // what each label upload sends
        window.puts = [];
        const f = window.fetch;
        window.fetch = (u, init) => {
            const b = init?.body;
            if (init?.method === 'PUT' && b instanceof FormData) window.puts.push({ box: b.get('box'), bytes: b.get('file').size });
            return f(u, init);
        };
    }""")
    _stroke(app, app.canvas_point(0.45, 0.15), app.canvas_point(0.55, 0.15))
    app.page.wait_for_function("() => document.body.dataset.pushes === '1'")
    after_stroke = app.counts()
    assert after_stroke != after_click
    if app.has_feature("putLabelBox"):
        put = app.page.evaluate("() => window.puts.at(-1)")
        assert put["box"] and put["bytes"] < 20_000, f"the stroke's push sends its box, not the whole label: {put}"

    def session_counts() -> dict[str, int]:
        sid = app.page.evaluate("() => window.segloop.session.id")
        r = api.get(f"/sessions/{sid}/label")
        r.raise_for_status()
        arr = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)
        values, n = np.unique(arr, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, n, strict=True)}

    def wait_counts(expected: dict[str, int]) -> None:
        app.page.wait_for_function(
            "e => JSON.stringify(window.segloopDebug.counts()) === JSON.stringify(e)", arg=expected)

    assert session_counts() == after_stroke, "the stroke is in the session"
    app.key("Control+z")  # the stroke
    wait_counts(after_click)
    app.key("Control+z")  # the click
    wait_counts(start)
    assert session_counts() == start
    app.key("Control+y")
    wait_counts(after_click)
    app.key("Control+y")
    wait_counts(after_stroke)
    assert session_counts() == after_stroke
    assert app.page.evaluate("() => window.segloop.stats.clicks") == 1, "redo did not click again"
    assert app.page.is_disabled("#redo")
    app.shot("15-undo-redo")


def test_overlays_each_on_off_with_own_opacity(app: AppPage, api: httpx.Client) -> None:
    image = "hippocampus_001"
    r = api.post("/evaluations", json={"image_id": image, "model": "tiny", "reference_revision": 1})
    assert r.status_code == 201, r.text
    app.open(image)

    def shown() -> list[str]:
        return [s for s in (app.body("overlays") or "").split(",") if s]

    def layers() -> int:
        n: int = app.page.evaluate("() => window.segloopDebug.viewer.nv.volumes.length")
        return n

    app.page.check("#ov-reference-on")
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference'")
    app.page.select_option("#ov-prediction", "model:tiny")  # choosing switches it on
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference,prediction'", timeout=60_000)
    app.page.wait_for_selector("#ov-discrepancy option[value^='eval:']", state="attached")
    app.page.check("#ov-discrepancy-on")
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference,prediction,discrepancy'")
    assert layers() == 4, "the image and three overlays"
    app.page.eval_on_selector("#ov-reference-opacity",
                              "e => { e.value = '0.2'; e.dispatchEvent(new Event('input', { bubbles: true })); }")
    opacities = app.page.evaluate("""() => {
        const v = window.segloopDebug.viewer;
        return [v.overlayOpacity.reference, v.overlayOpacity.prediction, v.nv.volumes[1].opacity];
    }""")
    assert opacities == [0.2, 0.5, 0.2], "each overlay has its own opacity"
    legend = app.page.inner_text("#overlay-legend")
    assert "reference" in legend and "prediction" in legend and "discrepancy" in legend
    assert "Anterior" in legend and "Posterior" in legend
    app.shot("16-three-overlays")
    app.page.uncheck("#ov-reference-on")
    app.page.wait_for_function("() => document.body.dataset.overlays === 'prediction,discrepancy'")
    assert layers() == 3
    app.key("o")  # keyboard toggle of the reference
    app.page.wait_for_function("() => document.body.dataset.overlays === 'reference,prediction,discrepancy'")
    assert "DICOM SEG export needs an image imported from DICOM" in app.page.inner_text("#export-note")
    assert app.page.is_hidden("#export-seg")


def test_model_queue_shows_scoring_then_rank_and_score(app: AppPage, api: httpx.Client, tmp_path: Path) -> None:
    from tests.browser.conftest import DATA

    strategies = api.get("/activelearning/strategies").json()["available"]
    if not any(s.get("needs_model") and s["name"] == "entropy" for s in strategies):
        pytest.skip("the server has no model-based ranking")
    for case in ("hippocampus_011", "hippocampus_014"):  # two images without a label
        src = tmp_path / f"{case}.nii.gz"
        shutil.copy(DATA / "imagesTr" / f"{case}.nii.gz", src)
        with src.open("rb") as f:
            r = api.post("/images", files={"file": (src.name, f, "application/gzip")})
        assert r.status_code == 201, r.text
    app.open("hippocampus_001")
    app.page.select_option("#strategy", "entropy")
    # the pool is scored by a job first (the test server never scores synchronously)
    app.page.wait_for_selector("#scoring:not([hidden])", timeout=30_000)
    app.shot("17-scoring")
    app.page.wait_for_selector("#scoring", state="hidden", timeout=120_000)
    # the ranked queue replaces the plain list shown while scoring (which holds the image as well)
    app.page.wait_for_function("() => document.querySelector('#wl-count').innerText.includes('ranked by entropy with ')")
    app.page.wait_for_selector("#worklist tr[data-id='hippocampus_011']")
    header = app.page.inner_text("#worklist thead")
    assert "#" in header and "Score" in header
    first = app.page.locator("#worklist tbody tr").first
    cells = first.locator("td").all_inner_texts()
    assert cells[0] == "1", "rank shown"
    assert float(cells[-1]) >= 0, "score shown"
    assert "ranked by entropy with " in app.page.inner_text("#wl-count")
    app.shot("18-ranked")


def test_dicom_seg_export_for_a_dicom_image(app: AppPage, api: httpx.Client) -> None:
    from tests.browser.conftest import DATA

    series = DATA.parent / "dicom" / "ct_seg_dcmqi" / "ct-3slice"
    if not series.is_dir():
        pytest.skip(f"{series} is missing")
    files = [("file", (f"ct-3slice/{f.name}", f.read_bytes(), "application/dicom")) for f in sorted(series.glob("*.dcm"))]
    r = api.post("/images", files=files)
    assert r.status_code == 201, r.text
    image = r.json()["images"][0]["id"]
    record = api.get(f"/images/{image}").json()
    assert record["source"].startswith("dicom")
    label = np.zeros(record["shape"], dtype=np.uint8)
    label[200:300, 200:300, 1] = 1
    nii = nib.Nifti1Image(label, affine=np.asarray(record["affine"], dtype=float))
    r = api.post(f"/images/{image}/labels", files={"file": ("l.nii.gz", gzip.compress(nii.to_bytes()), "application/gzip")},
                 data={"status": "final"})
    assert r.status_code == 201, r.text
    app.open(image)
    if not app.has_feature("dicomSeg"):
        pytest.skip("the server has no DICOM SEG download")
    assert app.page.is_visible("#export-seg")
    assert app.page.is_hidden("#send-pacs"), "no PACS connected: no Send to PACS button"
    with app.page.expect_download() as dl:
        app.page.click("#export-seg")
    path = dl.value.path()
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", "a DICOM file"
    assert dl.value.suggested_filename.endswith(".seg.dcm")
    app.shot("19-dicom-seg-export")


def test_session_label_upload_of_a_box(app: AppPage, api: httpx.Client) -> None:
    """PUT /sessions/{id}/label with a ``box``: only the box's voxels are replaced; a box outside
    the grid, a body of the wrong size or unknown class values are refused with nothing changed."""
    image = "hippocampus_004"
    app.open(image)
    if not app.has_feature("putLabelBox"):
        pytest.skip("the server takes no box uploads")
    for left in api.get("/sessions").json()["items"]:  # earlier tests' pages are closed; at most 8 sessions are open
        api.delete(f"/sessions/{left['id']}")
    r = api.post("/sessions", json={"image_id": image, "model": "tiny"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    def session_label() -> np.ndarray:
        r = api.get(f"/sessions/{sid}/label")
        r.raise_for_status()
        return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)

    def put(box: str, voxels: bytes) -> httpx.Response:
        return api.put(f"/sessions/{sid}/label", data={"box": box}, files={"file": ("box.bin", voxels)})

    before = session_label()
    sub = np.zeros((3, 4, 2), np.uint8)
    sub[0, 0, 0], sub[2, 3, 1] = 2, 1
    r = put("5,8,6,10,7,9", gzip.compress(sub.tobytes(order="F")))
    assert r.status_code == 200, r.text
    expected = before.copy()
    expected[5:8, 6:10, 7:9] = sub
    assert r.json()["changed_voxels"] == int(np.count_nonzero(expected != before))
    assert np.array_equal(session_label(), expected)
    shape = before.shape
    for box, voxels in ((f"0,{shape[0] + 1},0,1,0,1", bytes(shape[0] + 1)), ("5,8,6,10,7,9", bytes(5)),
                        ("0,1,0,1,0,1", bytes([99])), ("0,1,0,1", bytes(1))):
        bad = put(box, voxels)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_label", bad.text
    assert np.array_equal(session_label(), expected), "a refused upload changed nothing"
    api.delete(f"/sessions/{sid}")
