"""A real Orthanc for the PACS tier, started once per session (auth on, loopback, own storage),
with the DICOM sets from ../shared/data/dicom stored into it through STOW-RS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from segloop.store.dicomweb import DicomWebSource
from tests.pacs.orthanc import OrthancServer, find_dicomweb_plugin, find_orthanc


def require_tool(found: object, what: str) -> None:
    """Skip (fail on CI) when an external tool is missing."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} missing: run scripts/orthanc.sh install")
        pytest.skip(f"{what} not installed (scripts/orthanc.sh install)")


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    require_tool(find_orthanc(), "Orthanc")
    require_tool(find_dicomweb_plugin(), "Orthanc DICOMweb plugin")
    server = OrthancServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dicom_sets(shared_data: Path) -> dict[str, Path]:
    d = shared_data / "dicom"
    return {
        "ct": d / "ct_seg_dcmqi" / "ct-3slice",
        "mr": d / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume",
        "liver": d / "ct_seg_dcmqi" / "liver.dcm",
    }


@pytest.fixture(scope="session")
def uploaded(
    orthanc: OrthancServer, dicom_sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str]]:
    """STOW-RS the CT (3 slices), the HippoCrop MR (32 slices) and the liver SEG; (study, series) per set."""
    source = DicomWebSource(orthanc.dicomweb_url, tmp_path_factory.mktemp("stow-cache"), auth=orthanc.auth)
    out = {}
    for key, path in dicom_sets.items():
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        datasets = [pydicom.dcmread(f) for f in files]
        source.store_instances(datasets)
        out[key] = (str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))
    return out
