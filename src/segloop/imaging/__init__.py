"""Layer 1, imaging: `Volume` and reading/writing NIfTI and DICOM. No torch, HTTP or database here."""

from segloop.imaging.archive import is_zip_path, safe_extract_zip
from segloop.imaging.dicom import DicomScan, DicomSeries, read_dicom_series, scan_dicom
from segloop.imaging.dicom_seg import SegLabelMap, SegmentInfo, read_dicom_seg, write_dicom_seg
from segloop.imaging.discover import Discovery, ImageSource, discover
from segloop.imaging.errors import GeometryError, ImagingError
from segloop.imaging.nifti import is_nifti_path, nifti_bytes, read_nifti, write_nifti
from segloop.imaging.nrrd import is_nrrd_path, read_nrrd, write_nrrd
from segloop.imaging.volume import Volume

__all__ = [
    "DicomScan",
    "DicomSeries",
    "Discovery",
    "GeometryError",
    "ImageSource",
    "ImagingError",
    "SegLabelMap",
    "SegmentInfo",
    "Volume",
    "discover",
    "is_nifti_path",
    "is_nrrd_path",
    "is_zip_path",
    "nifti_bytes",
    "read_dicom_seg",
    "read_dicom_series",
    "read_nifti",
    "read_nrrd",
    "safe_extract_zip",
    "scan_dicom",
    "write_dicom_seg",
    "write_nifti",
    "write_nrrd",
]
