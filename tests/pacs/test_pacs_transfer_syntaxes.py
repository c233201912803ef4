"""Issue 17: compressed series from the PACS. WADO-RS asks for the stored transfer syntax
(``transfer-syntax=*``) and segloop decodes locally, so every syntax local import reads opens
from the PACS too, with the same voxels: Explicit/Implicit VR Little Endian, Big Endian, RLE,
JPEG Lossless, JPEG-LS, JPEG 2000 (``transfer_syntaxes_dcm_qa_ts``, Siemens mosaics), deflate
(a deflated copy), and the JPEG 2000 CT of ``ct_totalsegmentator_example`` (blank UIDs, given new
ones here because a PACS needs them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from segloop.imaging import read_dicom_series
from segloop.store.dicomweb import DicomWebSource
from tests.pacs.orthanc import OrthancServer

pytestmark = pytest.mark.slow


def _as_new_series(files: list[Path], *, deflate: bool = False) -> list[pydicom.Dataset]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        if deflate:
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
        out.append(ds)
    return out


SYNTAX_FILES = [f"{n}.dcm" for n in range(1, 10)]


@pytest.fixture
def source(orthanc: OrthancServer, tmp_path: Path) -> DicomWebSource:
    return DicomWebSource(orthanc.dicomweb_url, tmp_path / "cache", auth=orthanc.auth)


def _round_trip(source: DicomWebSource, files: list[Path], tmp_path: Path, *, deflate: bool = False) -> None:
    datasets = _as_new_series(files, deflate=deflate)
    syntax = str(datasets[0].file_meta.TransferSyntaxUID)
    source.store_instances(datasets)
    local = read_dicom_series(files)
    fetched = source.fetch_series(str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID),
                                  expected_instances=len(files))
    assert fetched.array.dtype == local.array.dtype, syntax
    assert np.array_equal(fetched.array, local.array), f"voxels differ for {syntax}"
    assert np.allclose(fetched.affine, local.affine), syntax


@pytest.mark.parametrize("name", SYNTAX_FILES)
def test_every_transfer_syntax_opens_from_the_pacs_like_local_import(
    source: DicomWebSource, shared_data: Path, tmp_path: Path, name: str
) -> None:
    _round_trip(source, [shared_data / "dicom" / "transfer_syntaxes_dcm_qa_ts" / "In" / name], tmp_path)


def test_deflated_instance_opens_from_the_pacs(source: DicomWebSource, shared_data: Path, tmp_path: Path) -> None:
    _round_trip(source, [shared_data / "dicom" / "transfer_syntaxes_dcm_qa_ts" / "In" / "1.dcm"], tmp_path,
                deflate=True)


def test_jpeg2000_ct_series_opens_from_the_pacs(source: DicomWebSource, shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "dicom" / "ct_totalsegmentator_example" / "example_ct_dicom"
    _round_trip(source, sorted(p for p in folder.iterdir() if p.is_file()), tmp_path)
