""""Send to PACS" in the web app, in a real browser, against a real segloop server whose images
come from a real Orthanc: open a series from the PACS, save a draft (the button says why it
cannot send it), save it final, send it, and find the SEG on Orthanc through its own QIDO-RS.

Needs what the browser tier needs (web/dist, Debian's chromium, playwright) and Orthanc.
Screenshots of each state go to the test's output folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from segloop.store.dicomweb import DicomWebSource
from segloop.store.dicomweb_store import series_image_id
from tests.browser.conftest import VIEWPORT, AppPage, web_server
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow

SCHEMA = {"classes": [{"value": 1, "name": "Hippocampus", "color": [230, 80, 60]}]}


@pytest.fixture()
def pacs_series(orthanc: OrthancServer, dicom_sets: dict[str, Path]) -> tuple[str, str]:
    """A copy of the HippoCrop MR (32 slices) under new UIDs: a study of its own on the PACS, so
    the SEG found there can only be the one this test sent."""
    study, series = generate_uid(), generate_uid()
    datasets = []
    for f in sorted(dicom_sets["mr"].iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    DicomWebSource(orthanc.dicomweb_url, Path(orthanc.folder) / "stow-cache", auth=orthanc.auth).store_instances(datasets)
    return study, series


@pytest.fixture()
def pacs_app(
    browser: Any, web_dist: Path, orthanc: OrthancServer, tmp_path: Path  # noqa: F811 (fixtures)
) -> Iterator[AppPage]:
    auth = {"SEGLOOP_DICOMWEB_AUTH": f"{orthanc.user}:{orthanc.password}"}
    with web_server(tmp_path / "data", web_dist, tmp_path / "server.log", ["--dicomweb", orthanc.dicomweb_url], auth) as url:
        httpx.put(f"{url}/api/v1/schema", json=SCHEMA, timeout=30).raise_for_status()
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        app = AppPage(page, url, shots)
        try:
            yield app
        except BaseException:
            app.shot("failure")
            raise
        finally:
            context.close()
        assert not app.errors, f"errors in the page: {app.errors}"
        assert not app.external, f"the app fetched from outside the server: {app.external}"


def _saved(app: AppPage, after: int) -> int:
    app.page.wait_for_function(
        "n => Number(document.body.dataset.savedRevision || 0) > n", arg=after, timeout=60_000
    )
    return int(app.body("savedRevision") or 0)


def test_send_a_final_label_to_the_pacs_from_the_browser(
    pacs_app: AppPage, pacs_series: tuple[str, str], orthanc: OrthancServer, tmp_path: Path
) -> None:
    app, (study, series) = pacs_app, pacs_series
    image_id = series_image_id(series)
    app.open(image_id)  # listed by QIDO-RS, fetched by WADO-RS through segloop
    assert app.body("pacs") == "1"
    button = app.page.locator("#send-pacs")
    assert button.is_visible() and button.is_disabled()
    assert "Save the label as final first" in app.page.inner_text("#pacs-status")
    app.shot("01-opened-from-pacs")

    # brush a stroke of class 1 in the axial view, save it as a draft: not sendable, says why
    app.key("a")
    app.key("1")
    app.key("b")
    for _ in range(3):
        app.key("]")
    x0, y0 = app.canvas_point(0.45, 0.48)
    x1, y1 = app.canvas_point(0.55, 0.52)
    app.page.mouse.move(x0, y0)
    app.page.mouse.down()
    app.page.mouse.move(x1, y1, steps=6)
    app.page.mouse.up()
    assert app.counts().get("1", 0) > 0
    app.page.click("#save-draft")
    _saved(app, 0)
    app.page.wait_for_function("() => (document.querySelector('#pacs-status')?.textContent || '').includes('draft')")
    assert button.is_disabled() and "Only final labels" in (button.get_attribute("data-reason") or "")
    app.shot("02-draft-not-sendable")

    app.page.click("#save-final")
    final = _saved(app, 1)
    app.page.wait_for_function("() => !document.querySelector('#send-pacs').disabled")
    app.shot("03-final-ready-to-send")
    button.click()
    app.page.wait_for_function("() => !!document.body.dataset.sent", timeout=120_000)
    revision, sop_uid = (app.body("sent") or "").split(":", 1)
    assert int(revision) == final
    assert "was sent to the PACS" in app.notices()
    assert f"Revision {final} was sent to the PACS" in app.page.inner_text("#pacs-status")
    app.shot("04-sent")

    # Orthanc's own DICOMweb: a SEG in the image's study that references the series
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path / "check", auth=orthanc.auth)
    segs = source.client.search_for_series(study, search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    seg_series = segs[0]["0020000E"]["Value"][0]
    instances = source.client.search_for_instances(study, seg_series)
    assert [i["00080018"]["Value"][0] for i in instances] == [sop_uid]
    seg = source.client.retrieve_instance(study, seg_series, sop_uid)
    assert str(seg.Modality) == "SEG"
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == series
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Hippocampus"]


def test_a_pacs_series_shows_its_middle_slice_before_the_series_is_here(
    pacs_app: AppPage, pacs_series: tuple[str, str]
) -> None:
    """Opening a series never fetched: the page asks for its middle slice (small requests to the
    PACS), draws it, then asks for the whole series. The series' answer is held back here until
    the slice is on screen, so the order is not luck."""
    app, (_, series) = pacs_app, pacs_series
    image_id = series_image_id(series)
    page = app.page
    held: list[Any] = []
    page.route(f"**/api/v1/images/{image_id}/volume", lambda route: held.append(route))
    page.goto(f"{app.base}/?image={image_id}")
    page.wait_for_function("() => { const p = document.querySelector('#preview'); return !!p && !p.hidden; }",
                           timeout=60_000)
    for _ in range(100):  # the series is asked for once the slice is on screen
        if held:
            break
        page.wait_for_timeout(100)
    assert held and not app.body("imageId")  # the whole series has not been answered yet
    bright = page.evaluate("""() => {
        const c = document.querySelector('#preview');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 60) n++;
        return n; }""")
    assert bright > 2000, f"the middle slice was not drawn ({bright} bright pixels)"
    app.shot("05-middle-slice-while-the-series-comes")
    held[0].continue_()
    page.unroute(f"**/api/v1/images/{image_id}/volume")
    page.wait_for_function("id => document.body.dataset.imageId === id", arg=image_id, timeout=60_000)
    assert page.locator("#preview").is_hidden()
    stats = page.evaluate("() => window.segloop.stats")
    assert stats["previewMs"] is not None and 0 < stats["previewMs"] <= stats["openMs"]
    app.shot("06-the-series-shown")
