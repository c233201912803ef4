"""Issue 17, faults: the real Orthanc is stopped, hung (SIGSTOP) and restarted while segloop lists,
views and sends. segloop answers 502/503/504 naming the PACS (never 422), within seconds, keeps
serving what it holds locally, never loses or duplicates a label, and recovers without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from segloop.cli.common import CommandError
from segloop.cli.serve_command import check_pacs
from segloop.server import ServerSettings, create_app
from segloop.store.dicomweb import DicomWebSource
from segloop.store.dicomweb_store import series_image_id
from tests.pacs.conftest import require_tool
from tests.pacs.orthanc import OrthancServer, find_dicomweb_plugin, find_orthanc
from tests.pacs.test_pacs_server import SCHEMA, _copy_series, _label_for, _settings

pytestmark = pytest.mark.slow
TIMEOUT = 2.0  # --dicomweb-timeout of the servers under test


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, dicom_sets: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """An Orthanc of this module's own (it is stopped and restarted) holding two CT series."""
    require_tool(find_orthanc(), "Orthanc")
    require_tool(find_dicomweb_plugin(), "Orthanc DICOMweb plugin")
    server = OrthancServer().start()
    try:
        source = DicomWebSource(server.dicomweb_url, tmp_path_factory.mktemp("stow"), auth=server.auth)
        series = []
        for _ in range(2):
            datasets = _copy_series(sorted(dicom_sets["ct"].iterdir()))
            source.store_instances(datasets)
            series.append((str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)))
        yield {"server": server, "series": series}
    finally:
        server.stop()


def _app(pacs: dict[str, Any], data: Path, **kw: Any) -> tuple[ServerSettings, dict[str, str]]:
    settings, headers = _settings(pacs["server"], data, dicomweb_timeout=TIMEOUT, **kw)
    return settings, headers


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return time.monotonic() - t, out


def _seg_instances(server: OrthancServer, seg_series_uid: str) -> int:
    source = DicomWebSource(server.dicomweb_url, server.folder / "q", auth=server.auth)
    found = source.list_series(series_uid=seg_series_uid)
    return sum(int(s.instances or 0) for s in found if s.series_uid == seg_series_uid)


def _wait_listed(client: TestClient, headers: dict[str, str], image_id: str, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        body = client.get("/api/v1/images", headers=headers).json()
        if "pacs_unreachable" not in body and image_id in {i["id"] for i in body["items"]}:
            return body
        assert time.monotonic() < deadline, f"segloop did not recover after the PACS came back: {body}"
        time.sleep(0.5)


def test_pacs_stopped_during_list_view_and_send_then_back(pacs: dict[str, Any], tmp_path: Path) -> None:
    server: OrthancServer = pacs["server"]
    (_, held_uid), (_, other_uid) = pacs["series"]
    held, other = series_image_id(held_uid), series_image_id(other_uid)
    settings, auth = _app(pacs, tmp_path / "data", ephemeral=True)
    annotator, reviewer = {"Authorization": auth["annotator"]}, {"Authorization": auth["reviewer"]}
    with TestClient(create_app(settings)) as client:
        store = client.app.state.segloop.store  # type: ignore[attr-defined]
        store.listing_ttl = 0.0  # every listing asks the PACS (default: cached 5 s)
        store.set_schema(SCHEMA)
        assert client.get(f"/api/v1/images/{held}/volume", headers=annotator).status_code == 200
        image = store.load_image(held)
        store.save_label(held, _label_for(image.shape), author="reviewer", status="final")

        server.pause()  # connections refused
        try:
            t, listing = _timed(client.get, "/api/v1/images", headers=annotator)
            assert listing.status_code == 200 and t < 8, (t, listing.text)
            body = listing.json()
            assert body["pacs_unreachable"]["code"] == "pacs_unreachable"
            assert server.dicomweb_url in body["pacs_unreachable"]["error"]
            assert [i["id"] for i in body["items"]] == [held]  # what is held here, flagged
            assert body["items"][0]["metadata"]["pacs_unreachable"] is True
            assert body["items"][0]["label_state"] == "final"

            assert client.get(f"/api/v1/images/{held}/volume", headers=annotator).status_code == 200
            t, view = _timed(client.get, f"/api/v1/images/{other}/volume", headers=annotator)
            assert view.status_code == 503 and t < 8, (t, view.text)
            assert int(view.headers["Retry-After"]) > 0
            err = view.json()["error"]
            assert err["code"] == "pacs_unreachable" and server.dicomweb_url in err["message"]

            t, sent = _timed(client.post, f"/api/v1/images/{held}/labels/1/send", headers=reviewer)
            assert sent.status_code == 503 and t < 8, (t, sent.text)
            assert "STOW-RS" in sent.json()["error"]["message"]
            assert client.get(f"/api/v1/images/{held}/labels", headers=annotator).json()  # still saved
            assert store.unsent_revisions(held) == [1]
            kept = client.post(f"/api/v1/images/{held}/release", headers=annotator)
            assert kept.status_code == 409 and kept.json()["error"]["code"] == "unsent_labels"
            state = client.get("/api/v1/pacs", headers=annotator).json()["state"]
            assert state["reachable"] is False and state["code"] == "pacs_unreachable"
        finally:
            server.resume()

        _wait_listed(client, annotator, other)  # no restart of segloop
        assert client.get(f"/api/v1/images/{other}/volume", headers=annotator).status_code == 200
        first = client.post(f"/api/v1/images/{held}/labels/1/send", headers=reviewer)
        assert first.status_code == 200, first.text
        again = client.post(f"/api/v1/images/{held}/labels/1/send", headers=reviewer)  # a re-send by hand
        assert again.status_code == 200, again.text
        assert again.json()["sop_instance_uid"] == first.json()["sop_instance_uid"]
        assert _seg_instances(server, first.json()["series_instance_uid"]) == 1  # no duplicate SEG
        assert client.get("/api/v1/pacs", headers=annotator).json()["state"]["reachable"] is True
        assert client.post(f"/api/v1/images/{held}/release", headers=annotator).status_code == 200


def test_hung_pacs_answers_504_within_the_timeout(pacs: dict[str, Any], tmp_path: Path) -> None:
    server: OrthancServer = pacs["server"]
    _, (_, other_uid) = pacs["series"]
    other = series_image_id(other_uid)
    settings, auth = _app(pacs, tmp_path / "data")
    annotator = {"Authorization": auth["annotator"]}
    with TestClient(create_app(settings)) as client:
        server.freeze()  # accepts connections, answers nothing
        try:
            t, listing = _timed(client.get, "/api/v1/images", headers=annotator)
            assert listing.status_code == 200 and t < 3 * TIMEOUT + 3, (t, listing.text)
            assert listing.json()["pacs_unreachable"]["code"] == "pacs_timeout"
            assert listing.json()["items"] == []
            t, view = _timed(client.get, f"/api/v1/images/{other}/volume", headers=annotator)
            assert view.status_code == 504 and t < 3 * TIMEOUT + 3, (t, view.text)
            assert view.json()["error"]["code"] == "pacs_timeout" and "Retry-After" in view.headers
        finally:
            server.thaw()
        _wait_listed(client, annotator, other)
        assert client.get(f"/api/v1/images/{other}/volume", headers=annotator).status_code == 200


def test_wrong_credentials_are_said_at_start_and_answer_502(pacs: dict[str, Any], tmp_path: Path) -> None:
    server: OrthancServer = pacs["server"]
    _, (_, other_uid) = pacs["series"]
    settings, auth = _app(pacs, tmp_path / "data")
    settings.dicomweb_auth = (server.user, "not-the-password")
    annotator = {"Authorization": auth["annotator"]}
    with TestClient(create_app(settings)) as client:
        store = client.app.state.segloop.store  # type: ignore[attr-defined]
        with pytest.raises(CommandError, match=r"refused segloop's credentials \(HTTP 401.*--dicomweb-auth"):
            check_pacs(store)
        listing = client.get("/api/v1/images", headers=annotator)
        assert listing.status_code == 200 and listing.json()["pacs_unreachable"]["code"] == "pacs_auth"
        view = client.get(f"/api/v1/images/{series_image_id(other_uid)}/volume", headers=annotator)
        assert view.status_code == 502 and view.json()["error"]["code"] == "pacs_auth", view.text


def test_serve_start_check_says_reachable(pacs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = _app(pacs, tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        check_pacs(client.app.state.segloop.store)  # type: ignore[attr-defined]
    assert "reachable, credentials accepted" in capsys.readouterr().err


def test_seg_uids_are_stable_per_revision(pacs: dict[str, Any], tmp_path: Path) -> None:
    from segloop.store.seg_import import export_dicom_seg

    (_, uid), _ = pacs["series"]
    settings, _ = _app(pacs, tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        store = client.app.state.segloop.store  # type: ignore[attr-defined]
        store.set_schema(SCHEMA)
        image_id = series_image_id(uid)
        shape = store.load_image(image_id).shape
        store.save_label(image_id, _label_for(shape), author="t", status="final")
        store.save_label(image_id, np.flip(_label_for(shape), 0).copy(), author="t", status="final", base_revision=1)
        a, _ = export_dicom_seg(store, image_id, 1, None, tmp_path / "a.dcm")
        b, _ = export_dicom_seg(store, image_id, 1, None, tmp_path / "b.dcm")
        c, _ = export_dicom_seg(store, image_id, 2, None, tmp_path / "c.dcm")
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
