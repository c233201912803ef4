"""Issue 17 against a real Orthanc: the cold first view of a PACS series is fetched with one
streamed WADO-RS request, parsed once in memory and answered from a NIfTI written without gzip
compression, while the local copy (gzip) is written in the background. The voxels are identical
to a local import of the same files at every stage; a label save waits for the local copy."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from segloop.imaging import read_dicom_series
from segloop.server import create_app
from segloop.store.dicomweb_store import DicomWebDatastore, series_image_id
from segloop.store.ingest import HEADERS_KIND, import_paths
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow


def _nifti(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    img = nib.Nifti1Image.from_bytes(gzip.decompress(body))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("key", ["ct", "mr"])
def test_first_view_voxels_are_those_of_a_local_import(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path], key: str
) -> None:
    local = open_datastore(tmp_path / "local")
    (imported,) = import_paths(local, [dicom_sets[key]]).images
    reference = local.load_image(imported.record.id)
    assert np.array_equal(reference.array, read_dicom_series(dicom_sets[key]).array)
    image_id = series_image_id(uploaded[key][1])
    settings = orthanc.segloop_settings(tmp_path / "data")
    app = create_app(settings)
    with TestClient(app) as client:
        store = app.state.segloop.store
        cold = client.get(f"/api/v1/images/{image_id}/volume")
        assert cold.status_code == 200
        data, affine = _nifti(cold.content)
        assert data.dtype == reference.array.dtype and np.array_equal(data, reference.array)
        np.testing.assert_allclose(affine, reference.affine, atol=1e-4)
        assert store.is_fetched(image_id)
        seconds = store.last_fetch["seconds"]
        assert {"wado", "parse", "scan", "decode", "headers", "view_file"} <= set(seconds)
        record = client.get(f"/api/v1/images/{image_id}").json()
        assert record["metadata"]["fetched"] is True and tuple(record["shape"]) == reference.shape
        assert client.get(f"/api/v1/images/{image_id}/labels").json()["items"] == []
        store.settle()
        assert "register_background" in store.last_fetch["seconds"]
        again = client.get(f"/api/v1/images/{image_id}/volume")
        assert np.array_equal(_nifti(again.content)[0], reference.array)
        stored = store.local.load_image(image_id)  # the local copy, written in the background
        assert np.array_equal(stored.array, reference.array)
        kept = sorted(store.attachments_dir(image_id, HEADERS_KIND).iterdir())
        assert len(kept) == len(list(dicom_sets[key].iterdir()))
        header = pydicom.dcmread(kept[0])
        assert "PixelData" not in header and header.SeriesInstanceUID == uploaded[key][1]
        # the same slice order of SOP instances as a local import keeps (what a SEG export references)
        assert store.get_image(image_id).metadata["sop_instance_uids"] == imported.record.metadata["sop_instance_uids"]
    # a new server on the same folder serves the local copy
    with TestClient(create_app(settings)) as client:
        warm = client.get(f"/api/v1/images/{image_id}/volume")
        assert np.array_equal(_nifti(warm.content)[0], reference.array)
    local.close()


def test_a_label_saved_right_after_the_first_view_waits_for_the_local_copy(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    store = DicomWebDatastore.open(tmp_path / "data", orthanc.dicomweb_url, auth=orthanc.auth)
    try:
        image_id = series_image_id(uploaded["mr"][1])
        image = store.load_image(image_id)  # cold: the local copy is still being written
        store.set_schema(LabelSchema((LabelClass(1, "Hippocampus", (200, 80, 60)),)))
        label = np.zeros(image.shape, dtype=np.uint8)
        label[2:5, 3:9, 4:6] = 1
        rev = store.save_label(image_id, label, author="t", status="draft")
        assert rev.revision == 1 and store.list_revisions(image_id)[0].revision == 1
        assert np.array_equal(store.load_label(image_id).array, label)
        assert (tmp_path / "data" / "images" / f"{image_id}.nii.gz").is_file()
    finally:
        store.close()
    # nothing of the fetch is left in staging once the store is closed
    assert not [p for p in (tmp_path / "data" / "staging").rglob("*") if p.is_file()]


def test_an_undeliverable_series_leaves_nothing_behind(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    store = DicomWebDatastore.open(tmp_path / "data", orthanc.dicomweb_url, auth=orthanc.auth)
    try:
        image_id = series_image_id(uploaded["liver"][1])  # a SEG: not an image series
        with pytest.raises(Exception, match="not a series|no DICOM image series|not one volume"):
            store.load_image(image_id)
        assert not store.is_fetched(image_id)
    finally:
        store.close()
    staging = tmp_path / "data" / "staging"
    assert not staging.exists() or not [p for p in staging.rglob("*") if p.is_file()]
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
