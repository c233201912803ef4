"""`DicomSeries`: one volume's worth of DICOM data, found from headers, and its assembly
into a `Volume` (decoding each slice's pixels, stacking and rescaling them; a Siemens mosaic
unpacked by nibabel)."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from segloop.imaging.dicom_geometry import _LPS_TO_RAS
from segloop.imaging.dicom_pixels import (
    _decode,
    _decode_message,
    _dicomwrappers,
    _is_decode_error,
    _read_full,
    _rescale,
    _stack_and_rescale,
)
from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume


@dataclass(frozen=True)
class _Slice:
    path: Path
    frame: int | None  # index into a multi-frame file; None for a single-frame file
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    slope: float
    intercept: float


@dataclass
class DicomSeries:
    """One volume's worth of DICOM data, found from headers only.

    Attributes:
        key: stable grouping key (no absolute paths), used for `name`.
        layout: ``"slices"`` (one 2-D image per file), ``"mosaic"`` (one Siemens mosaic file)
            or ``"multiframe"`` (one enhanced multi-frame file).
        paths: the files, in slice order.
        affine: ``(4, 4)`` voxel -> RAS+ affine for the array ``(columns, rows, slices)``;
            for a mosaic it is computed when the file is read.
        shape: ``(X, Y, Z)``.
        metadata: modality, patient and series fields (see `read`).
    """

    key: str
    layout: Literal["slices", "mosaic", "multiframe"]
    paths: tuple[Path, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray | None
    metadata: dict[str, Any]
    slices: tuple[_Slice, ...] = field(default=(), repr=False)
    transfer_syntaxes: tuple[str, ...] = ()
    datasets: dict[Path, Dataset] | None = field(default=None, repr=False, compare=False)
    """Full data sets (pixels included) by path, when the series was read from memory
    (`read_dicom_parts`); ``None``: the files are read when decoding."""

    @property
    def name(self) -> str:
        """Readable, stable display name: description + short hash of the series key."""
        desc = (
            self.metadata.get("series_description")
            or self.metadata.get("protocol_name")
            or self.metadata.get("modality")
            or "dicom"
        )
        return f"{sanitize_name(str(desc))}_{hashlib.sha1(self.key.encode()).hexdigest()[:8]}"

    @property
    def folder(self) -> Path:
        return self.paths[0].parent

    def read(self) -> Volume:
        """Decode the pixels into a `Volume`.

        Returns:
            Volume with array ``(columns, rows, slices)`` (``(X, Y, Z, 3)`` for RGB) and a
            voxel -> RAS+ affine. Metadata: modality, patient_id, patient_name, study_uid,
            series_uid, series_description, study_date, manufacturer, frame_of_reference_uid,
            source_paths (the number of files), format="dicom", plus name, layout.

        Raises:
            ImagingError: pixel data missing or not decodable (naming the transfer syntax).
        """
        if self.layout == "mosaic":
            return self._read_mosaic()
        decoded = self._decoded_in_memory()
        cache: dict[Path, np.ndarray] = {}
        planes: list[np.ndarray] = []
        for sl in self.slices:
            if decoded is not None:
                data = decoded[sl.path]
            elif sl.path not in cache:
                cache.clear()  # keep one decoded file in memory
                cache[sl.path] = data = _decode(sl.path)
            else:
                data = cache[sl.path]
            plane = data if sl.frame is None else data[sl.frame]
            expected = self.shape[1], self.shape[0]
            if plane.shape[:2] != expected:
                raise ImagingError(
                    sl.path, f"pixel array shape {plane.shape} does not match Rows x Columns {expected}"
                )
            planes.append(plane)
        array = _stack_and_rescale(planes, [s.slope for s in self.slices], [s.intercept for s in self.slices])
        assert self.affine is not None
        return Volume(array, self.affine.copy(), self._volume_metadata())

    def _decoded_in_memory(self) -> dict[Path, np.ndarray] | None:
        """The in-memory data sets' pixels, decoded in a thread pool when they are compressed
        (the JPEG/JPEG 2000 decoders release the GIL); ``None`` when read from files."""
        if self.datasets is None:
            return None
        paths = list(dict.fromkeys(sl.path for sl in self.slices))
        compressed = any(UID(ts).is_compressed for ts in self.transfer_syntaxes if ts)
        if not compressed or len(paths) < 4:
            return {path: _decode(path, self.datasets[path]) for path in paths}
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="dicom-decode") as pool:
            arrays = list(pool.map(lambda path: _decode(path, self.datasets[path]), paths))  # type: ignore[index]
        return dict(zip(paths, arrays, strict=True))

    def _read_mosaic(self) -> Volume:
        dicomwrappers = _dicomwrappers()
        path = self.paths[0]
        ds = self.datasets[path] if self.datasets is not None else _read_full(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrapper = dicomwrappers.wrapper_from_data(ds)
                data = np.asarray(wrapper.get_unscaled_data())  # (rows, cols, slices)
                nib_affine = np.asarray(wrapper.affine, dtype=np.float64)  # LPS, axes (row, col, slice)
        except ImagingError:
            raise
        except Exception as exc:
            ts = UID(str(ds.file_meta.TransferSyntaxUID)) if "TransferSyntaxUID" in ds.file_meta else None
            if _is_decode_error(exc):
                raise ImagingError(path, _decode_message(ts, exc)) from exc
            raise ImagingError(path, f"cannot unpack Siemens mosaic ({type(exc).__name__}: {exc})") from exc
        lps = nib_affine.copy()
        lps[:, [0, 1]] = nib_affine[:, [1, 0]]
        planes = [data[:, :, k] for k in range(data.shape[2])]
        slope, intercept = _rescale(ds)
        array = _stack_and_rescale(planes, [slope] * len(planes), [intercept] * len(planes))
        return Volume(array, _LPS_TO_RAS @ lps, self._volume_metadata())

    def _volume_metadata(self) -> dict[str, Any]:
        meta = dict(self.metadata)
        meta["source_paths"] = len(self.paths)
        meta["format"] = "dicom"
        meta["name"] = self.name
        meta["layout"] = self.layout
        return meta


def sanitize_name(text: str, max_length: int = 48) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]`` (runs of other characters become ``_``)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._-")
    return clean[:max_length] or "dicom"
