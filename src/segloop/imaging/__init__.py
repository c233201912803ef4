"""Layer 1, imaging: `Volume` and reading/writing NIfTI and DICOM. No torch, HTTP or database here."""

from segloop.imaging.archive import is_zip_path, safe_extract_zip
from segloop.imaging.dicom import DicomScan, DicomSeries, read_dicom_series, scan_dicom
from segloop.imaging.discover import Discovery, ImageSource, discover
from segloop.imaging.errors import GeometryError, ImagingError
from segloop.imaging.nifti import is_nifti_path, nifti_bytes, read_nifti, write_nifti
from segloop.imaging.volume import Volume

__all__ = [
    "DicomScan",
    "DicomSeries",
    "Discovery",
    "GeometryError",
    "ImageSource",
    "ImagingError",
    "Volume",
    "discover",
    "is_nifti_path",
    "is_zip_path",
    "nifti_bytes",
    "read_dicom_series",
    "read_nifti",
    "safe_extract_zip",
    "scan_dicom",
    "write_nifti",
]
