"""Reading and writing NIfTI-1/2 (``.nii``, ``.nii.gz``) with nibabel."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file fully (the data is decoded now, so a truncated file fails here).

    Raises:
        ImagingError: the file is not a readable NIfTI volume, is truncated, or is not 3-D/4-D.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImagingError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
        data = np.asarray(img.dataobj)
    except ImagingError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as exc:
        raise ImagingError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ImagingError(path, f"expected a 3-D or 4-D volume, got shape {data.shape}")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImagingError(path, "the header's affine is missing or singular")
    header = img.header
    meta = {
        "format": "nifti",
        "source_path": str(path),
        "description": header.get("descrip", b"").tobytes().decode("latin-1").strip("\x00 ") if "descrip" in header else "",
    }
    return Volume(data, affine, meta)


def write_nifti(volume: Volume, path: str | Path, dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if data.dtype == np.bool_:  # NIfTI has no boolean type
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, volume.affine)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def nifti_bytes(volume: Volume, dtype: np.dtype | type | None = None) -> bytes:
    """The volume as gzip-compressed NIfTI-1 bytes (for HTTP responses)."""
    data = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, volume.affine)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1)
