"""Issue 17 against a real Orthanc: the first image of a PACS series before the series is here.
``GET /images/{id}/preview`` of a series never fetched asks the PACS for its instance listing (or
five instances of a long one) and one instance — a middle slice by position — and answers it as a
one-slice NIfTI at its place in the world, with the voxels of a local import; the series itself is
not fetched by it."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from segloop.imaging import read_dicom_series
from segloop.imaging.volume import middle_slice
from segloop.server import create_app
from segloop.store.dicomweb import DicomWebSource
from segloop.store.dicomweb_preview import SAMPLED_ABOVE
from segloop.store.dicomweb_store import DicomWebDatastore, series_image_id
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow


def _nifti(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    img = nib.Nifti1Image.from_bytes(gzip.decompress(body))
    return np.asarray(img.dataobj), img.affine


def _slice_index(volume_affine: np.ndarray, preview_affine: np.ndarray) -> int:
    """Which slice of the volume the preview is: its origin in the volume's voxel indices."""
    ijk = np.linalg.inv(volume_affine) @ preview_affine @ [0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(ijk[:2], [0.0, 0.0], atol=1e-3)
    k = int(round(float(ijk[2])))
    assert abs(ijk[2] - k) < 1e-3
    return k


@pytest.mark.parametrize("key", ["ct", "mr"])
def test_the_preview_is_a_middle_slice_of_the_series_without_fetching_it(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]], dicom_sets: dict[str, Path], key: str
) -> None:
    whole = read_dicom_series(dicom_sets[key])
    image_id = series_image_id(uploaded[key][1])
    settings = orthanc.segloop_settings(tmp_path / "data")
    app = create_app(settings)
    with TestClient(app) as client:
        store = app.state.segloop.store
        cold = client.get(f"/api/v1/images/{image_id}/preview")
        assert cold.status_code == 200, cold.text
        data, affine = _nifti(cold.content)
        assert data.shape == (*whole.shape[:2], 1)
        # a slice of the series, at its place, with a local import's voxels; near the middle
        k = _slice_index(whole.affine, affine)
        assert data.dtype == whole.array.dtype and np.array_equal(data[..., 0], whole.array[..., k])
        assert abs(k - whole.shape[2] / 2) <= whole.shape[2] / 4, k
        assert not store.is_fetched(image_id)  # small requests, not the series
        assert client.get(f"/api/v1/images/{image_id}").json()["metadata"]["fetched"] is False
        # once the series is here, the preview is cut from it: the middle slice
        assert client.get(f"/api/v1/images/{image_id}/volume").status_code == 200
        warm = client.get(f"/api/v1/images/{image_id}/preview")
        assert warm.status_code == 200
        reference = middle_slice(whole)
        again, again_affine = _nifti(warm.content)
        assert np.array_equal(again, reference.array)
        np.testing.assert_allclose(again_affine, reference.affine, atol=1e-4)
        store.settle()


def test_a_long_series_stored_in_stack_order_previews_its_exact_middle(
    orthanc: OrthancServer, tmp_path: Path, dicom_sets: dict[str, Path]
) -> None:
    """32 instances (more than are listed whole): five are sampled from the listing, which here
    follows the stack, so the sample at its middle is the middle slice, spacing included."""
    datasets = [pydicom.dcmread(f) for f in sorted(dicom_sets["mr"].iterdir())]
    normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    study, series = generate_uid(), generate_uid()
    for d in datasets:
        d.StudyInstanceUID, d.SeriesInstanceUID = study, series
        d.SOPInstanceUID = generate_uid()
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
    assert len(datasets) > SAMPLED_ABOVE
    for d in datasets:  # one at a time: the PACS lists them in this order
        DicomWebSource(orthanc.dicomweb_url, tmp_path / "stow", auth=orthanc.auth).store_instances([d])
    reference = middle_slice(read_dicom_series(dicom_sets["mr"]))
    store = DicomWebDatastore.open(tmp_path / "data", orthanc.dicomweb_url, auth=orthanc.auth)
    try:
        preview = store.preview(series_image_id(series))
        assert np.array_equal(preview.array, reference.array)
        np.testing.assert_allclose(preview.affine, reference.affine, atol=1e-4)
        assert not store.is_fetched(series_image_id(series))
    finally:
        store.close()


def test_a_preview_of_what_is_not_an_image_series_is_refused(
    orthanc: OrthancServer, tmp_path: Path, uploaded: dict[str, tuple[str, str]]
) -> None:
    with TestClient(create_app(orthanc.segloop_settings(tmp_path / "data"))) as client:
        seg = series_image_id(uploaded["liver"][1])  # a SEG series: not listed as an image
        assert client.get(f"/api/v1/images/{seg}/preview").status_code == 404
        assert client.get("/api/v1/images/dw-0000000000000000/preview").status_code == 404
