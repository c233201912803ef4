"""Layer 1, imaging: `Volume` and reading/writing NIfTI and DICOM. No torch, HTTP or database here."""

from segloop.imaging.errors import GeometryError, ImagingError
from segloop.imaging.nifti import is_nifti_path, nifti_bytes, read_nifti, write_nifti
from segloop.imaging.volume import Volume

__all__ = [
    "GeometryError",
    "ImagingError",
    "Volume",
    "is_nifti_path",
    "nifti_bytes",
    "read_nifti",
    "write_nifti",
]
