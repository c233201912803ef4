"""Issue 7 against a real Orthanc: the DICOMweb datastore, "send to PACS", ephemeral mode and
bad input (undeliverable series, SEGs that reference nothing or do not fit)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from segloop.imaging import ImagingError, Volume
from segloop.imaging.dicom_seg import read_dicom_seg
from segloop.server import ServerSettings, create_app
from segloop.server.app import RELEASE_GRACE_SECONDS
from segloop.server.auth import AuthConfig, new_token
from segloop.store.dicomweb import DicomWebSource
from segloop.store.dicomweb_http import PacsError
from segloop.store.dicomweb_store import DicomWebDatastore, series_image_id
from segloop.store.ingest import HEADERS_KIND, import_paths
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema
from segloop.store.seg_import import import_dicom_seg
from tests.pacs.conftest import require_tool
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow

SCHEMA = LabelSchema((LabelClass(1, "Liver", (200, 80, 60)), LabelClass(2, "Spleen", (20, 200, 20))))


def _dciodvfy_errors(path: Path) -> list[str]:
    require_tool(shutil.which("dciodvfy"), "dciodvfy (dicom3tools)")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def _copy_series(files: list[Path]) -> list[pydicom.Dataset]:
    """The instances with new study/series/SOP UIDs (a series of its own on the PACS)."""
    study, series = generate_uid(), generate_uid()
    out: list[pydicom.Dataset] = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def _label_for(shape: tuple[int, ...]) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    x, y, _ = shape
    label[x // 4 : x // 2, y // 4 : y // 2, :] = 1
    label[x // 2 + 2 : x // 2 + 10, y // 2 + 2 : y // 2 + 10, 0] = 2
    return label


def _settings(orthanc: OrthancServer, data: Path, **kw: Any) -> tuple[ServerSettings, dict[str, str]]:
    tokens: dict[str, str] = {}
    entries: dict[str, tuple[str, str]] = {}
    for role in ("annotator", "reviewer"):
        token, digest = new_token()
        tokens[role] = token
        entries[digest] = (role, role)
    settings = ServerSettings(
        data=data,
        auth=AuthConfig({}, entries),
        job_mode="thread",
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_auth=orthanc.auth,
        **kw,
    )
    return settings, {r: f"Bearer {t}" for r, t in tokens.items()}


@pytest.fixture
def dw_store(orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]) -> Iterator[DicomWebDatastore]:
    store = DicomWebDatastore.open(tmp_path / "data", orthanc.dicomweb_url, auth=orthanc.auth)
    yield store
    store.close()


# --- the datastore ---------------------------------------------------------------------------


def test_datastore_lists_pacs_series_with_local_label_state(
    dw_store: DicomWebDatastore, orthanc: OrthancServer, uploaded: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    ct_id, mr_id = series_image_id(uploaded["ct"][1]), series_image_id(uploaded["mr"][1])
    listed = {r.id: r for r in dw_store.list_images()}
    assert {ct_id, mr_id} <= set(listed)
    assert series_image_id(uploaded["liver"][1]) not in listed  # a SEG is not an image
    assert listed[ct_id].metadata["fetched"] is False and listed[ct_id].shape == (0, 0, 3)
    assert list((tmp_path / "data" / "images").iterdir()) == []  # listing fetched nothing

    dw_store.set_schema(SCHEMA)
    image = dw_store.load_image(ct_id)  # first use: WADO-RS
    assert image.shape == (512, 512, 3) and dw_store.is_fetched(ct_id)
    dw_store.save_label(ct_id, _label_for(image.shape), author="t", status="draft")
    again = {r.id: r for r in dw_store.list_images()}
    assert again[ct_id].label_state == "draft" and again[ct_id].metadata["fetched"] is True
    assert again[ct_id].name == listed[ct_id].name  # named as the PACS describes it
    assert [r.id for r in dw_store.list_images(label_state="draft")] == [ct_id]
    assert len(list(dw_store.attachments_dir(ct_id, HEADERS_KIND).iterdir())) == 3

    only_mr = DicomWebDatastore(dw_store.local, dw_store.source, filters={"modality": "MR"})
    pacs_ids = {r.id for r in only_mr.list_images() if r.metadata.get("fetched") is False}
    assert mr_id in pacs_ids and ct_id not in pacs_ids


def test_existing_seg_on_pacs_imports_onto_an_unfetched_series(
    dw_store: DicomWebDatastore, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path]
) -> None:
    ct_id = series_image_id(uploaded["ct"][1])
    assert not dw_store.is_fetched(ct_id)
    imported = import_dicom_seg(dw_store, dicom_sets["liver"])  # finds the listed series, fetches it
    assert imported.image.id == ct_id and imported.revision.revision == 1
    assert dw_store.get_image(ct_id).label_state == "final"


def _listed(client: TestClient, headers: dict[str, str], **params: str) -> set[str]:
    r = client.get("/api/v1/images", headers=headers, params=params)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == len(r.json()["items"])
    return {i["id"] for i in r.json()["items"]}


def test_request_filters_go_to_qido_within_the_start_up_filters(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    ct_id, mr_id = series_image_id(uploaded["ct"][1]), series_image_id(uploaded["mr"][1])
    # CT: study date 20030417, no description; MR: 20200119, "HippoCrop"
    settings, auth = _settings(orthanc, tmp_path / "open")
    h = {"Authorization": auth["annotator"]}
    with TestClient(create_app(settings)) as client:
        everything = _listed(client, h)
        assert {ct_id, mr_id} <= everything
        mr = _listed(client, h, modality="mr")
        assert mr_id in mr and ct_id not in mr
        assert ct_id in _listed(client, h, study_date="20030417") and mr_id not in _listed(client, h, study_date="20030417")
        in_2020 = _listed(client, h, study_date="20200101-20201231")
        assert mr_id in in_2020 and ct_id not in in_2020
        assert mr_id in _listed(client, h, study_date="20200101-") and ct_id in _listed(client, h, study_date="-20100101")
        assert mr_id in _listed(client, h, description="hippocrop")  # Orthanc matches case-insensitively too
        assert ct_id not in _listed(client, h, description="hippo*")
        assert _listed(client, h, modality="MR", study_date="20030417") == set()
        bad = client.get("/api/v1/images", headers=h, params={"study_date": "17.04.2003"})
        assert bad.status_code == 422 and "YYYYMMDD" in bad.json()["error"]["message"]
        # nothing was fetched to answer these
        assert list((tmp_path / "open" / "images").iterdir()) == []

    settings, auth = _settings(orthanc, tmp_path / "ct-only", dicomweb_filters={"modality": "CT"})
    h = {"Authorization": auth["annotator"]}
    with TestClient(create_app(settings)) as client:
        assert ct_id in _listed(client, h) and mr_id not in _listed(client, h)
        assert _listed(client, h, modality="MR") == set()  # a request cannot widen the start-up filter
        assert mr_id not in _listed(client, h, study_date="20200119")
        assert ct_id in _listed(client, h, study_date="20030417", modality="ct")


# --- the server: browse, fetch, label, download SEG, send to PACS -----------------------------


def test_send_final_label_to_pacs_and_read_it_back(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    settings, auth = _settings(orthanc, tmp_path / "data")
    study, series = uploaded["mr"]
    mr_id = series_image_id(series)
    with TestClient(create_app(settings)) as client:
        reviewer, annotator = {"Authorization": auth["reviewer"]}, {"Authorization": auth["annotator"]}
        listed = {i["id"]: i for i in client.get("/api/v1/images", headers=annotator).json()["items"]}
        assert listed[mr_id]["label_state"] == "none"
        assert client.get("/api/v1/pacs", headers=annotator).json()["url"] == orthanc.dicomweb_url
        assert client.get(f"/api/v1/images/{mr_id}/volume", headers=annotator).status_code == 200  # WADO
        state = client.app.state.segloop  # type: ignore[attr-defined]
        state.store.set_schema(SCHEMA)
        image = state.store.load_image(mr_id)
        label = _label_for(image.shape)
        state.store.save_label(mr_id, label, author="t", status="final")

        got = client.get(f"/api/v1/images/{mr_id}/labels/1/dicom-seg", headers=annotator)
        assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
        seg_file = tmp_path / "download.dcm"
        seg_file.write_bytes(got.content)
        assert _dciodvfy_errors(seg_file) == []
        assert np.array_equal(read_dicom_seg(seg_file, image).label.array, label)

        assert client.post(f"/api/v1/images/{mr_id}/labels/1/send", headers=annotator).status_code == 403
        sent = client.post(f"/api/v1/images/{mr_id}/labels/latest/send", headers=reviewer)
        assert sent.status_code == 200, sent.text
        body = sent.json()
        assert any(e["type"] == "label.sent" and e["data"]["sop_instance_uid"] == body["sop_instance_uid"]
                   for e in state.bus.recent(0))

        state.store.save_label(mr_id, label, author="t", status="draft", base_revision=1)
        draft = client.post(f"/api/v1/images/{mr_id}/labels/2/send", headers=reviewer)
        assert draft.status_code == 409 and draft.json()["error"]["code"] == "not_final"

        plain = state.store.add_image(image, name="upload", source="file:upload.nii.gz")
        state.store.save_label(plain.id, label, author="t", status="final")
        not_dicom = client.post(f"/api/v1/images/{plain.id}/labels/1/send", headers=reviewer)
        assert not_dicom.status_code == 422 and not_dicom.json()["error"]["code"] == "not_dicom"

    # the SEG is on the PACS, in the image's study, with the same voxels
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path / "check", auth=orthanc.auth)
    assert body["series_instance_uid"] in {s.series_uid for s in source.list_series(modality="SEG")}
    back = source.client.retrieve_instance(study, body["series_instance_uid"], body["sop_instance_uid"])
    assert str(back.ReferencedSeriesSequence[0].SeriesInstanceUID) == series
    assert np.array_equal(read_dicom_seg(back, image).label.array, label)


def test_send_without_dicomweb_is_refused_but_download_works(tmp_path: Path, dicom_sets: dict[str, Path]) -> None:
    data = tmp_path / "data"
    store = open_datastore(data)
    record = import_paths(store, [dicom_sets["ct"]]).images[0].record
    store.set_schema(SCHEMA)
    store.save_label(record.id, _label_for(record.shape), author="t", status="final")
    store.close()
    with TestClient(create_app(ServerSettings(data=data, job_mode="thread"))) as client:
        refused = client.post(f"/api/v1/images/{record.id}/labels/1/send")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_dicomweb"
        assert "--dicomweb" in refused.json()["error"]["message"]
        assert client.get(f"/api/v1/images/{record.id}/labels/1/dicom-seg").status_code == 200


# --- ephemeral mode ----------------------------------------------------------------------------


def _files_containing(folder: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            hits += [f"{path.relative_to(folder)}: {n}" for n in needles if n.encode() in raw]
    return hits


def test_ephemeral_mode_leaves_nothing_of_the_patient_on_disk(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    settings, auth = _settings(orthanc, data, ephemeral=True)
    study, series = uploaded["mr"]
    mr_id, ct_id = series_image_id(series), series_image_id(uploaded["ct"][1])
    header = pydicom.dcmread(sorted(dicom_sets["mr"].iterdir())[0], stop_before_pixels=True)
    needles = [str(header.PatientID), series, str(header.SOPInstanceUID), study]
    reviewer = {"Authorization": auth["reviewer"]}
    with TestClient(create_app(settings)) as client:
        state = client.app.state.segloop  # type: ignore[attr-defined]
        assert client.get(f"/api/v1/images/{mr_id}/volume", headers=reviewer).status_code == 200
        assert client.get(f"/api/v1/images/{ct_id}/volume", headers=reviewer).status_code == 200
        state.store.set_schema(SCHEMA)
        state.store.save_label(mr_id, _label_for(state.store.get_image(mr_id).shape), author="t", status="final")
        state.store.settle()  # the local copies are written in the background after the first view
        # while the server runs, the fetched series are on disk
        assert sorted(p.name for p in (data / "images").iterdir()) == sorted([f"{mr_id}.nii.gz", f"{ct_id}.nii.gz"])
        assert len(list((data / "attachments" / mr_id / HEADERS_KIND).iterdir())) == 32
        assert _files_containing(data, needles)
        sent = client.post(f"/api/v1/images/{mr_id}/labels/1/send", headers=reviewer)
        assert sent.status_code == 200
        # the end of a viewing session releases one image at once
        assert client.post(f"/api/v1/images/{ct_id}/release", headers=reviewer).json()["released"] is True
        assert not (data / "images" / f"{ct_id}.nii.gz").exists()
        assert not (data / "attachments" / ct_id).exists()
    # the server stopped: no voxels, headers, labels, cache entries or identifiers remain
    assert list((data / "images").iterdir()) == []
    assert list((data / "attachments").iterdir()) == []
    assert [p for p in (data / "labels").rglob("*") if p.is_file()] == []
    assert [p for p in (data / "dicomweb-cache").rglob("*") if p.is_file()] == []
    assert [p for p in (data / "staging").rglob("*") if p.is_file()] == []
    assert _files_containing(data, needles) == []
    # what was sent is on the PACS
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path / "check", auth=orthanc.auth)
    assert sent.json()["series_instance_uid"] in {s.series_uid for s in source.list_series(modality="SEG")}


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _events(state: Any, type_: str, image_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in state.bus.recent(0) if e["type"] == type_ and e["data"].get("image_id") == image_id]


def test_ephemeral_release_when_the_last_session_ends_never_loses_an_unsent_label(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path]
) -> None:
    """Sessions are opened on the session manager directly (the DELETE /sessions route, expiry and
    the MONAI Label surface all end them through `SessionManager.close`); no model is needed."""
    data = tmp_path / "data"
    settings, auth = _settings(orthanc, data, ephemeral=True)
    study, series = uploaded["mr"]
    mr_id, ct_id = series_image_id(series), series_image_id(uploaded["ct"][1])
    header = pydicom.dcmread(sorted(dicom_sets["mr"].iterdir())[0], stop_before_pixels=True)
    needles = [str(header.PatientID), series, str(header.SOPInstanceUID), study]
    reviewer = {"Authorization": auth["reviewer"]}

    def on_disk(image_id: str) -> bool:
        return (data / "images" / f"{image_id}.nii.gz").exists() or (data / "attachments" / image_id).exists()

    with TestClient(create_app(settings)) as client:
        state = client.app.state.segloop  # type: ignore[attr-defined]
        state.store.set_schema(SCHEMA)
        for image_id in (mr_id, ct_id):
            assert client.get(f"/api/v1/images/{image_id}/volume", headers=reviewer).status_code == 200
        state.store.settle()  # the local copies are written in the background after the first view
        assert on_disk(mr_id) and on_disk(ct_id)

        # CT, no label: released once its *last* session ends
        first = state.sessions.add(ct_id, "m", 1, "reviewer", object())
        second = state.sessions.add(ct_id, "m", 1, "reviewer", object())
        state.sessions.close(first.id)
        time.sleep(RELEASE_GRACE_SECONDS + 1.0)
        assert on_disk(ct_id), "another session is still open on it"
        state.sessions.close(second.id)
        _wait(lambda: bool(_events(state, "image.released", ct_id)), "image.released")
        assert not on_disk(ct_id)
        assert _events(state, "image.released", ct_id)[-1]["why"] == "session_ended"

        # MR with a draft that was never sent: the expired session releases nothing
        shape = state.store.get_image(mr_id).shape
        session = state.sessions.add(mr_id, "m", 1, "reviewer", object())
        state.store.save_label(mr_id, _label_for(shape), author="t", status="draft")
        session.last_used -= 10 * state.sessions.idle_seconds
        assert state.sessions.expire() == [session.id]
        _wait(lambda: bool(_events(state, "image.kept", mr_id)), "image.kept")
        assert _events(state, "image.kept", mr_id)[-1]["unsent_revisions"] == [1]
        assert on_disk(mr_id) and [p for p in (data / "labels").rglob("*") if p.is_file()]
        refused = client.post(f"/api/v1/images/{mr_id}/release", headers=reviewer)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "unsent_labels"
        assert refused.json()["error"]["unsent_revisions"] == [1] and on_disk(mr_id)
        assert client.get("/api/v1/pacs", headers=reviewer).json()["held"] == {mr_id: [1]}

        # a final revision sent to the PACS: the next session end releases the image and its labels
        state.store.save_label(mr_id, _label_for(shape), author="t", status="final", base_revision=1)
        sent = client.post(f"/api/v1/images/{mr_id}/labels/2/send", headers=reviewer)
        assert sent.status_code == 200, sent.text
        assert client.get("/api/v1/pacs", headers=reviewer).json()["held"] == {}
        session = state.sessions.add(mr_id, "m", 1, "reviewer", object())
        state.sessions.close(session.id)
        _wait(lambda: bool(_events(state, "image.released", mr_id)), "the MR to leave the disk")
        assert not on_disk(mr_id)
        assert [p for p in (data / "labels").rglob("*") if p.is_file()] == []
        assert _files_containing(data, needles) == []

        # still viewing it, the user saves on top of the released revision: fetched again, saved
        again = state.store.save_label(mr_id, _label_for(shape), author="t", status="draft", base_revision=2)
        assert again.revision == 1 and on_disk(mr_id)

    # the server stopped: the unsent draft stays on disk, logged; a restart does not purge it
    assert on_disk(mr_id) and not on_disk(ct_id)
    settings, auth = _settings(orthanc, data, ephemeral=True)
    reviewer = {"Authorization": auth["reviewer"]}
    with TestClient(create_app(settings)) as client:
        assert on_disk(mr_id)
        assert client.get("/api/v1/pacs", headers=reviewer).json()["held"] == {mr_id: [1]}
        gone = client.post(f"/api/v1/images/{mr_id}/release", headers=reviewer, params={"discard_unsent": "true"})
        assert gone.status_code == 200 and gone.json()["reason"] == "discarded_unsent"
        assert not on_disk(mr_id)
    assert list((data / "images").iterdir()) == [] and list((data / "attachments").iterdir()) == []
    assert [p for p in (data / "labels").rglob("*") if p.is_file()] == []
    assert _files_containing(data, needles) == []


def test_ephemeral_image_viewed_without_a_session_is_released_when_left_unused(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    data = tmp_path / "data"
    settings, auth = _settings(orthanc, data, ephemeral=True, session_idle_seconds=2.0)
    ct_id = series_image_id(uploaded["ct"][1])
    with TestClient(create_app(settings)) as client:
        state = client.app.state.segloop  # type: ignore[attr-defined]
        assert client.get(f"/api/v1/images/{ct_id}/volume", headers={"Authorization": auth["reviewer"]}).status_code == 200
        state.store.settle()  # the local copy is written in the background after the first view
        assert (data / "images" / f"{ct_id}.nii.gz").exists()
        _wait(lambda: bool(_events(state, "image.released", ct_id)), "the idle release", timeout=30)
        assert _events(state, "image.released", ct_id)[-1]["why"] == "idle"
        assert not (data / "images" / f"{ct_id}.nii.gz").exists() and not (data / "attachments" / ct_id).exists()
        # an upload is not a cached copy of the PACS: never released, neither automatically nor on request
        upload = state.store.add_image(Volume(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), "upload", "file:u.nii.gz")
        refused = client.post(f"/api/v1/images/{upload.id}/release", headers={"Authorization": auth["reviewer"]})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_from_pacs"
        assert state.store.is_fetched(upload.id)


def test_ephemeral_needs_dicomweb(tmp_path: Path) -> None:
    from segloop.server import SettingsError

    with pytest.raises(SettingsError, match="--ephemeral needs --dicomweb"):
        create_app(ServerSettings(data=tmp_path / "d", ephemeral=True))


# --- bad input ----------------------------------------------------------------------------------


def _lose_instance_files(orthanc: OrthancServer, series_uid: str, count: int) -> str:
    """Delete the storage files of ``count`` instances of the series (not the first one, which
    Orthanc's QIDO reads to describe the series); returns Orthanc's series id."""
    api = orthanc.url
    found = requests.post(f"{api}/tools/lookup", data=series_uid, auth=orthanc.auth, timeout=10).json()
    series_id = next(f["ID"] for f in found if f["Type"] == "Series")
    instances = requests.get(f"{api}/series/{series_id}", auth=orthanc.auth, timeout=10).json()["Instances"]
    for instance in instances[1 : 1 + count]:
        uuid = requests.get(
            f"{api}/instances/{instance}/attachments/dicom/info", auth=orthanc.auth, timeout=10
        ).json()["Uuid"]
        (path,) = [p for p in (orthanc.folder / "storage").rglob(uuid) if p.is_file()]
        path.unlink()
    return str(series_id)


@pytest.mark.parametrize("remove", [1, 2])
def test_series_listed_but_not_delivered_stores_nothing(
    orthanc: OrthancServer, dw_store: DicomWebDatastore, dicom_sets: dict[str, Path], remove: int
) -> None:
    """Orthanc lists the series (from its index) but has lost ``remove`` of its 3 instance files."""
    datasets = _copy_series(sorted(dicom_sets["ct"].iterdir()))
    dw_store.source.store_instances(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    orthanc_id = _lose_instance_files(orthanc, series, remove)
    try:
        image_id = series_image_id(series)
        assert image_id in {r.id for r in dw_store.list_images()}  # QIDO still lists it
        with pytest.raises(PacsError, match=rf"study {study} series {series}"):
            dw_store.load_image(image_id)
        assert dw_store.local.list_images() == []
        assert list((dw_store.root / "images").iterdir()) == []
        assert [p for p in (dw_store.root / "dicomweb-cache").rglob("*") if p.is_file()] == []
    finally:  # a broken series would break the other tests' listings
        requests.delete(f"{orthanc.url}/series/{orthanc_id}", auth=orthanc.auth, timeout=30)


def test_seg_referencing_a_series_not_there_stores_nothing(
    dw_store: DicomWebDatastore, dicom_sets: dict[str, Path], tmp_path: Path
) -> None:
    seg = pydicom.dcmread(dicom_sets["liver"])
    missing = generate_uid()
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = missing
    path = tmp_path / "orphan.dcm"
    seg.save_as(path)
    with pytest.raises(ImagingError, match=rf"SEG {seg.SOPInstanceUID} references series {missing}.*not in the datastore"):
        import_dicom_seg(dw_store, path)
    assert dw_store.local.list_images() == [] and dw_store.get_schema().foreground == ()


def test_seg_with_mismatched_geometry_stores_nothing(
    dw_store: DicomWebDatastore, dicom_sets: dict[str, Path], uploaded: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    seg = pydicom.dcmread(dicom_sets["liver"])
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1.5, 1.5]
    path = tmp_path / "misfit.dcm"
    seg.save_as(path)
    ct_id = series_image_id(uploaded["ct"][1])
    with pytest.raises(ImagingError, match=rf"{seg.SOPInstanceUID}.*{uploaded['ct'][1]}|{uploaded['ct'][1]}.*{seg.SOPInstanceUID}"):
        import_dicom_seg(dw_store, path)
    assert dw_store.get_image(ct_id).latest_revision is None and dw_store.get_schema().foreground == ()


# --- the whole loop: a PACS series, a model's prediction, saved and sent back ----------------


def _series_from_array(array: np.ndarray, template: Path) -> list[pydicom.Dataset]:
    """A CT series (one instance per slice) holding ``array`` (X=columns, Y=rows, Z=slices)."""
    base = pydicom.dcmread(template)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out: list[pydicom.Dataset] = []
    for k in range(array.shape[2]):
        ds = pydicom.dcmread(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = "synthetic phantom"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype(np.int16)).tobytes()
        for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        out.append(ds)
    assert base.SOPInstanceUID not in {d.SOPInstanceUID for d in out}
    return out


def test_infer_on_a_pacs_series_save_and_send_back(
    orthanc: OrthancServer, tmp_path: Path, dicom_sets: dict[str, Path]
) -> None:
    from segloop.ml.predictor import Predictor
    from segloop.ml.training import train
    from tests.unit.al_synthetic import SCHEMA as AL_SCHEMA
    from tests.unit.al_synthetic import synthetic_case, tiny_train_config

    rng = np.random.default_rng(0)
    settings, auth = _settings(orthanc, tmp_path / "data")
    image, _ = synthetic_case(rng)
    datasets = _series_from_array(np.rint(image * 100.0), sorted(dicom_sets["ct"].iterdir())[0])
    DicomWebSource(orthanc.dicomweb_url, tmp_path / "up", auth=orthanc.auth).store_instances(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    image_id = series_image_id(series)
    with TestClient(create_app(settings)) as client:
        store = client.app.state.segloop.store  # type: ignore[attr-defined]
        store.set_schema(AL_SCHEMA)
        for n in range(4):  # a local training set (uploads), then a tiny model
            img, lab = synthetic_case(rng)
            rec = store.add_image(Volume(img * 100.0, np.eye(4)), f"case{n}", "test")
            store.save_label(rec.id, lab, author="reference", status="final")
        train(store, "seg", tiny_train_config(epochs=6), device="cpu")
        fetched = store.load_image(image_id)  # WADO-RS on first use
        prediction = Predictor.load(store, "seg", device="cpu").predict(fetched)
        assert prediction.label.array.any()
        rev = store.save_label(
            image_id, prediction.label, author="model", source=f"model:seg@{prediction.version}", status="final"
        )
        sent = client.post(f"/api/v1/images/{image_id}/labels/{rev.revision}/send",
                           headers={"Authorization": auth["reviewer"]})
        assert sent.status_code == 200, sent.text
    body = sent.json()
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path / "check", auth=orthanc.auth)
    back = source.client.retrieve_instance(study, body["series_instance_uid"], body["sop_instance_uid"])
    assert back.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    back.save_as(tmp_path / "model.seg.dcm")
    assert _dciodvfy_errors(tmp_path / "model.seg.dcm") == []
    assert np.array_equal(read_dicom_seg(back, fetched).label.array, prediction.label.array)
