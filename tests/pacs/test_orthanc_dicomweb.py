"""Integration tests against a real Orthanc (Debian orthanc + orthanc-dicomweb) over DICOMweb.

Orthanc is started once for the module on a free loopback port with its own storage, auth on
and a test user (tests/pacs/orthanc.py); ``scripts/orthanc.sh install`` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from segloop.imaging import read_dicom_series
from segloop.imaging.dicom_seg import read_dicom_seg
from segloop.store.dicomweb import DicomWebSource
from segloop.store.dicomweb_http import PacsError
from segloop.store.local import LocalDatastore, open_datastore
from segloop.store.records import LabelClass, LabelSchema
from segloop.store.seg_import import export_dicom_seg, import_dicom_seg
from tests.pacs.conftest import require_tool as _require
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow


@pytest.fixture
def source(orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]) -> DicomWebSource:
    return DicomWebSource(orthanc.dicomweb_url, tmp_path / "cache", auth=orthanc.auth)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalDatastore]:
    s = open_datastore(tmp_path / "store")
    yield s
    s.close()


def test_authentication_is_required(orthanc: OrthancServer, tmp_path: Path) -> None:
    assert requests.get(f"{orthanc.dicomweb_url}/series", timeout=10).status_code == 401
    anonymous = DicomWebSource(orthanc.dicomweb_url, tmp_path / "c")
    with pytest.raises(PacsError, match="QIDO-RS series search failed: the PACS refused segloop's credentials") as err:
        anonymous.list_series()
    assert (err.value.status, err.value.code, err.value.http_status) == (502, "pacs_auth", 401)


def test_qido_lists_and_filters_series(source: DicomWebSource, uploaded: dict[str, tuple[str, str]]) -> None:
    everything = {s.series_uid: s for s in source.list_series()}
    assert {uploaded[k][1] for k in ("ct", "mr", "liver")} <= set(everything)
    ct = everything[uploaded["ct"][1]]
    assert (ct.modality, ct.instances, ct.study_date) == ("CT", 3, "20030417")
    assert everything[uploaded["mr"][1]].instances == 32
    only_ct = {s.series_uid for s in source.list_series(modality="CT")}
    assert uploaded["ct"][1] in only_ct and uploaded["mr"][1] not in only_ct
    mr_desc = everything[uploaded["mr"][1]].description
    assert mr_desc
    by_desc = {s.series_uid for s in source.list_series(description=mr_desc[1:-1])}
    assert by_desc == {uploaded["mr"][1]}
    assert uploaded["ct"][1] in {s.series_uid for s in source.list_series(study_date="20030101-20031231")}
    assert uploaded["ct"][1] not in {s.series_uid for s in source.list_series(study_date="19990101")}


def test_wado_fetch_matches_local_read_and_is_cached(
    source: DicomWebSource, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path]
) -> None:
    study, series = uploaded["mr"]
    local = read_dicom_series(dicom_sets["mr"])
    assert not source.is_cached(series)
    fetched = source.fetch_series(study, series)
    assert np.array_equal(fetched.array, local.array) and np.allclose(fetched.affine, local.affine)
    assert source.is_cached(series)
    again = source.fetch_series(study, series)  # from the cache
    assert np.array_equal(again.array, local.array) and again.metadata["series_uid"] == series
    headers = sorted(source.cached_headers(series).iterdir())
    assert len(headers) == 32 and "PixelData" not in pydicom.dcmread(headers[0])


def test_cache_is_bounded_and_evicts_least_recently_used(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path / "small", auth=orthanc.auth, cache_bytes=1)
    source.fetch_series(*uploaded["mr"])
    assert source.is_cached(uploaded["mr"][1])  # the series just fetched is kept
    source.fetch_series(*uploaded["ct"])
    assert source.is_cached(uploaded["ct"][1]) and not source.is_cached(uploaded["mr"][1])


def test_series_that_is_not_there_names_uids(
    source: DicomWebSource, uploaded: dict[str, tuple[str, str]]
) -> None:
    study = uploaded["ct"][0]
    with pytest.raises(PacsError, match=rf"study {study} series 1\.2\.3\.4\.5"):
        source.fetch_series(study, "1.2.3.4.5")
    assert not source.is_cached("1.2.3.4.5")


def test_seg_round_trip_through_orthanc(
    source: DicomWebSource, store: LocalDatastore, uploaded: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """Browse, fetch, label, export SEG, STOW it, read it back from Orthanc, compare voxels."""
    study, series = uploaded["ct"]
    record = source.import_series(store, study, series)
    assert record.metadata["series_uid"] == series and record.source == f"dicomweb:{study}/{series}"
    assert source.import_series(store, study, series).id == record.id  # no duplicate
    store.set_schema(
        LabelSchema((LabelClass(1, "Liver", (200, 80, 60)), LabelClass(2, "Spleen", (20, 200, 20))))
    )
    image = store.load_image(record.id)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[120:260, 200:330, :] = 1
    label[300:340, 60:100, 1] = 2
    store.save_label(record.id, label, author="tester", source="model:unet@1", status="final")

    seg_path = tmp_path / "out.seg.dcm"
    ds, _ = export_dicom_seg(store, record.id, None, source.cached_headers(series), seg_path)
    if shutil.which("dciodvfy"):
        proc = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True, timeout=120)
        assert [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")] == []
    else:
        _require(None, "dciodvfy (dicom3tools)")
    assert source.store_seg(seg_path) == str(ds.SOPInstanceUID)

    listed = {s.series_uid: s for s in source.list_series(modality="SEG")}
    assert str(ds.SeriesInstanceUID) in listed
    back = source.client.retrieve_instance(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    mapped = read_dicom_seg(back, image)
    assert np.array_equal(mapped.label.array, label)

    # and the SEG fetched from the PACS imports as a new revision with the same voxels
    fetched = tmp_path / "fetched.dcm"
    back.save_as(fetched)
    imported = import_dicom_seg(store, fetched, author="pacs")
    assert imported.revision.revision == 2
    assert np.array_equal(store.load_label(record.id).array, label)


def test_existing_seg_on_orthanc_imports_onto_fetched_series(
    source: DicomWebSource,
    store: LocalDatastore,
    uploaded: dict[str, tuple[str, str]],
    dicom_sets: dict[str, Path],
) -> None:
    study, series = uploaded["ct"]
    record = source.import_series(store, study, series)
    liver_study, liver_series = uploaded["liver"]
    datasets = source.client.retrieve_series(liver_study, liver_series)
    assert len(datasets) == 1
    mapped = read_dicom_seg(datasets[0], store.load_image(record.id))
    local = read_dicom_seg(dicom_sets["liver"], read_dicom_series(dicom_sets["ct"]))
    assert np.array_equal(mapped.label.array, local.label.array) and local.label.array.any()
