"""Reading DICOM image series into `Volume` (pydicom; nibabel.nicom for Siemens mosaics).

Two steps, so that discovery stays fast:

1. `scan_dicom` reads only the headers (``stop_before_pixels``), sorts files into series and
   checks their geometry. It returns `DicomSeries` objects, the files it skipped (non-image
   DICOM objects such as SEG, RTSTRUCT, SR, PR, with the reason) and one `ImagingError` per
   bad file or series.
2. `DicomSeries.read` decodes the pixels and returns the `Volume`.

Skipped, not errors
-------------------
* Non-image objects, by SOP class (or Modality where the SOP class is blank): SEG, RTSTRUCT,
  RTDOSE, RTPLAN and other RT objects (RT Image excepted), SR, PR, KO, waveforms, encapsulated
  documents, registrations, DICOMDIR.
* 2-D images without patient geometry (no ImagePositionPatient/ImageOrientationPatient/
  PixelSpacing) whose modality is not CT, MR, PT, NM or ST: screenshots, dose reports,
  radiographs. For those five modalities missing geometry is an error.

Errors (`ImagingError`, naming the file or the series folder): not a DICOM file, unreadable
header, an image without pixel data, a transfer syntax no installed decoder handles, pixel data
that fails to decode (at `DicomSeries.read`, naming the transfer syntax), duplicate or uneven
slice positions (below), a multi-frame file without per-frame geometry.

Grouping rules
--------------
* Files are grouped by SeriesInstanceUID **and** geometry: FrameOfReferenceUID, Rows/Columns,
  PixelSpacing (to 1e-3 mm), samples per pixel and ImageOrientationPatient (cosines equal
  within 1e-3). So one UID shared by differently shaped/oriented stacks gives several volumes.
* Where SeriesInstanceUID is blank, the folder (relative to the scanned root) and the
  StudyInstanceUID stand in for it, together with the same geometry fields.
* A group in which several files project to the same slice position is split by the first of
  EchoNumbers, TemporalPositionIdentifier, AcquisitionNumber, TriggerTime, ImageType that
  leaves every part free of duplicates; when none does, the group is refused (stacking it
  would interleave volumes).
* A Siemens mosaic file (ImageType contains MOSAIC) and an enhanced multi-frame file are each
  one volume on their own, even where several share a SeriesInstanceUID.

Geometry
--------
Slices are sorted along the slice normal ``n = row_cosine x column_cosine`` by the projection of
ImagePositionPatient on ``n``. The array is ``(columns, rows, slices)`` so ``array[i, j, k]`` has
``i`` along the IOP row direction (the first three IOP values) and ``j`` along the column
direction. The affine's third column is the mean step between consecutive slice positions (so
oblique and gantry-tilted series keep their true geometry); it is converted from DICOM LPS to
RAS+ by negating its first two rows. A single-slice series gives ``Z = 1`` with the slice
thickness (or SpacingBetweenSlices, or 1 mm) as its third spacing.

Gap policy
----------
A series whose slice spacing is not uniform is **refused** with an `ImagingError` naming the
series folder, the two positions around the gap and the expected spacing. The expected
spacing is the median step between sorted positions; a step that differs from it by more than
``GAP_TOLERANCE`` (10 %) of the spacing, or slice positions that do not lie on one line within
the same tolerance, is an error. Missing slices are never interpolated.

Pixel values
------------
RescaleSlope/RescaleIntercept are applied per slice. When they are all integral the result is
an integer array (the stored dtype when there is no rescale, otherwise int16 or int32, the
smallest that holds the values); otherwise float32. Colour (RGB) series are ``(X, Y, Z, 3)``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume

GAP_TOLERANCE = 0.10
"""Largest allowed deviation of a slice step from the series' spacing, as a fraction of it."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

SEG_REASON = "DICOM Segmentation (SEG) — not an image; a label of the series it references (segloop import-seg)"
"""Why a SEG is skipped as an image; `segloop import` then imports it as a label revision."""

_NON_IMAGE_SOP: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": SEG_REASON,
    "1.2.840.10008.5.1.4.1.1.66.7": "DICOM Label Map Segmentation — not an image; segloop does not import label map SEGs yet",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set (RTSTRUCT) — contours, not an image",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose (RTDOSE) — a dose grid, not an anatomical image",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan (RTPLAN) — not an image",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan — not an image",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data — not an image",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration (REG) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials (FID) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration (REG) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation — not an image",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping — not an image",
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory index) — not an image; its images are read from their own files",
}
_NON_IMAGE_SOP_PREFIX: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88.", "Structured Report (SR) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.11.", "Presentation State (PR) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.9.", "Waveform (ECG/audio) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.104.", "Encapsulated document (PDF/CDA/STL) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.481.", "RT treatment object — not an image"),
)
_NON_IMAGE_MODALITY: dict[str, str] = {
    "SEG": SEG_REASON,
    "RTSTRUCT": "RT Structure Set (RTSTRUCT) — contours, not an image",
    "RTDOSE": "RT Dose (RTDOSE) — a dose grid, not an anatomical image",
    "RTPLAN": "RT Plan (RTPLAN) — not an image",
    "RTRECORD": "RT treatment record — not an image",
    "SR": "Structured Report (SR) — not an image",
    "PR": "Presentation State (PR) — not an image",
    "KO": "Key Object Selection (KO) — not an image",
    "DOC": "Encapsulated document (DOC) — not an image",
    "REG": "Spatial Registration (REG) — not an image",
    "FID": "Spatial Fiducials (FID) — not an image",
    "ECG": "Waveform (ECG) — not an image",
}
CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "ST"})
"""Modalities whose images must carry 3-D geometry: without it they are errors, not skipped."""
_SPLIT_FIELDS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "ImageType")


# --------------------------------------------------------------------------------------------
# Header level
# --------------------------------------------------------------------------------------------


def looks_like_dicom(path: Path) -> bool:
    """Cheap test on the first bytes: a ``DICM`` marker at byte 128, or a raw (preamble-less)
    data set starting with a group 0x0002 or 0x0008 tag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


@dataclass
class DicomHeader:
    """A DICOM file's header (no pixel data) and what was learned about it."""

    path: Path
    dataset: Dataset
    has_pixel_data: bool
    pixel_offset: int | None = None
    """For an instance read from memory (`header_from_bytes`): where its pixel data element
    starts, so ``data[:pixel_offset]`` is the instance without pixels, as ``stop_before_pixels``
    reads it (``None``: unknown, e.g. deflated)."""

    @property
    def transfer_syntax(self) -> UID:
        meta = getattr(self.dataset, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        return UID(str(ts)) if ts else UID("1.2.840.10008.1.2")


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read one file's header without its pixel data.

    Raises:
        ImagingError: the file is not DICOM, or its header cannot be parsed.
    """
    path = Path(path)
    if not looks_like_dicom(path):
        raise ImagingError(
            path, "not a DICOM file (no DICM marker at byte 128 and no DICOM tag at the start)"
        )
    try:
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
                    raise ImagingError(path, "not a DICOM file (no DICOM data set could be parsed)") from None
            # stop_before_pixels rewinds to the pixel data tag when there is one
            tag = fh.read(4)
    except ImagingError:
        raise
    except Exception as exc:  # pydicom raises many types on a corrupt header
        raise ImagingError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return DicomHeader(path, ds, True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
        # deflated: pydicom parsed an inflated copy, so the file position says nothing; read it all
        try:
            full = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise ImagingError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
        has = any(k in full for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        return DicomHeader(path, ds, has)
    has_pixels = len(tag) == 4 and (
        (tag[:2] == b"\xe0\x7f" and tag[2:] in (b"\x10\x00", b"\x08\x00", b"\x09\x00"))
        or (tag[:2] == b"\x7f\xe0" and tag[2:] in (b"\x00\x10", b"\x00\x08", b"\x00\x09"))
    )
    return DicomHeader(path, ds, has_pixels)


def non_image_reason(header: DicomHeader) -> str | None:
    """Why this DICOM object is not an image to import (``None`` when it is an image)."""
    ds = header.dataset
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    if sop in _NON_IMAGE_SOP:
        return _NON_IMAGE_SOP[sop]
    for prefix, reason in _NON_IMAGE_SOP_PREFIX:
        if sop.startswith(prefix) and sop != "1.2.840.10008.5.1.4.1.1.481.1":  # 481.1 is RT Image
            return reason
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _NON_IMAGE_MODALITY:
        return _NON_IMAGE_MODALITY[modality]
    is_image_class = UID(sop).name.endswith("Image Storage") if sop else False
    if (
        not header.has_pixel_data
        and not is_image_class
        and "Rows" not in ds
        and "DirectoryRecordSequence" not in ds
    ):
        name = UID(sop).name if sop else "unknown SOP class"
        return f"DICOM object without image data ({name}) — not an image"
    if "DirectoryRecordSequence" in ds:
        return _NON_IMAGE_SOP["1.2.840.10008.1.3.10"]
    return None


@functools.lru_cache(maxsize=64)
def _decoder_problem(ts: UID) -> str | None:
    """A message when no installed decoder handles transfer syntax ``ts``."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"pixel data uses transfer syntax {ts.name} ({ts}), which pydicom cannot decode"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return (
            f"pixel data uses transfer syntax {ts.name} ({ts}) and no decoder plugin is installed ({missing})"
        )
    return None


# --------------------------------------------------------------------------------------------
# Series
# --------------------------------------------------------------------------------------------


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


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _header_metadata(ds: Dataset) -> dict[str, Any]:
    return {
        "modality": _str(ds, "Modality"),
        "patient_id": _str(ds, "PatientID"),
        "patient_name": _str(ds, "PatientName"),
        "study_uid": _str(ds, "StudyInstanceUID"),
        "series_uid": _str(ds, "SeriesInstanceUID"),
        "series_description": _str(ds, "SeriesDescription"),
        "protocol_name": _str(ds, "ProtocolName"),
        "study_date": _str(ds, "StudyDate"),
        "manufacturer": _str(ds, "Manufacturer"),
        "frame_of_reference_uid": _str(ds, "FrameOfReferenceUID"),
        "format": "dicom",
    }


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def _is_mosaic(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "MOSAIC" in image_type


def _is_multiframe(ds: Dataset) -> bool:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except (TypeError, ValueError):
        return False


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


@dataclass
class DicomScan:
    """Result of `scan_dicom`."""

    series: list[DicomSeries] = field(default_factory=list)
    errors: list[ImagingError] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Plane:
    """Geometry of one single-frame image file (from its header)."""

    header: DicomHeader
    iop: np.ndarray  # (6,)
    spacing: np.ndarray  # (2,) PixelSpacing (row spacing, column spacing)
    position: np.ndarray  # (3,)
    rows: int
    columns: int


def scan_dicom(paths: Iterable[str | Path], root: str | Path | None = None) -> DicomScan:
    """Read the headers of ``paths`` (DICOM files) and group them into series.

    Args:
        paths: DICOM files (any names).
        root: folder the series keys are made relative to (keeps names stable when the same
            data is found under a different absolute path); defaults to file names only.

    Returns:
        `DicomScan` with the series (sorted by name), one `ImagingError` per bad file or
        series, and the skipped non-image objects with their reason.
    """
    headers: list[DicomHeader | ImagingError] = []
    for raw in sorted(Path(p) for p in paths):
        try:
            headers.append(read_dicom_header(raw))
        except ImagingError as exc:
            headers.append(exc)
    return _scan_headers(headers, root)


def _scan_headers(headers: Iterable[DicomHeader | ImagingError], root: str | Path | None) -> DicomScan:
    """`scan_dicom` on headers read already (an `ImagingError` stands for an unreadable file)."""
    root_path = Path(root) if root is not None else None
    scan = DicomScan()
    planes: list[_Plane] = []
    for header in headers:
        if isinstance(header, ImagingError):
            scan.errors.append(header)
            continue
        raw = header.path
        reason = non_image_reason(header)
        if reason is not None:
            scan.skipped.append((raw, reason))
            continue
        ds = header.dataset
        if not header.has_pixel_data:
            scan.errors.append(ImagingError(raw, f"DICOM image ({_sop_name(ds)}) has no pixel data"))
            continue
        problem = _decoder_problem(header.transfer_syntax)
        if problem is not None:
            scan.errors.append(ImagingError(raw, problem))
            continue
        try:
            if _is_mosaic(ds):
                scan.series.append(_mosaic_series(header, root_path))
            elif _is_multiframe(ds):
                scan.series.append(_multiframe_series(header, root_path))
            else:
                planes.append(_plane(header))
        except _NoGeometry as exc:
            modality = _str(ds, "Modality").upper()
            if modality in CROSS_SECTIONAL_MODALITIES:
                scan.errors.append(exc)
            else:
                scan.skipped.append(
                    (
                        raw,
                        f"2-D image without patient geometry ({_sop_name(ds)}, modality {modality or 'unknown'}; "
                        "e.g. a screenshot, dose report or radiograph) — not a 3-D volume",
                    )
                )
        except ImagingError as exc:
            scan.errors.append(exc)
    for group in _group_planes(planes, root_path):
        try:
            scan.series.append(_slices_series(group, root_path))
        except ImagingError as exc:
            scan.errors.append(exc)
    scan.series.sort(key=lambda s: (s.name, str(s.paths[0])))
    return scan


def _sop_name(ds: Dataset) -> str:
    sop = _str(ds, "SOPClassUID")
    return UID(sop).name if sop else "blank SOP class"


class _NoGeometry(ImagingError):
    """An image without ImagePositionPatient/ImageOrientationPatient/PixelSpacing."""


def _plane(header: DicomHeader) -> _Plane:
    ds = header.dataset
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    missing = [
        name
        for name, val in (
            ("ImageOrientationPatient", iop),
            ("ImagePositionPatient", ipp),
            ("PixelSpacing", spacing),
            ("Rows", rows),
            ("Columns", cols),
        )
        if val is None
    ]
    if missing:
        raise _NoGeometry(
            header.path, f"DICOM image without 3-D geometry (missing or invalid {', '.join(missing)})"
        )
    assert iop is not None and ipp is not None and spacing is not None
    _check_iop(header.path, iop)
    return _Plane(header, iop, spacing, ipp, int(rows), int(cols))


def _check_iop(path: Path, iop: np.ndarray) -> None:
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-2 or abs(np.linalg.norm(c) - 1) > 1e-2 or abs(np.dot(r, c)) > 1e-2:
        raise ImagingError(path, f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")


def _normal(iop: np.ndarray) -> np.ndarray:
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(r, c)
    return np.asarray(n / np.linalg.norm(n))


def _group_planes(planes: list[_Plane], root: Path | None) -> list[list[_Plane]]:
    """Group single-frame images by series and geometry, then split duplicate positions."""
    coarse: dict[tuple[str, ...], list[_Plane]] = defaultdict(list)
    for p in planes:
        ds = p.header.dataset
        uid = _str(ds, "SeriesInstanceUID")
        base = (
            ("uid", uid)
            if uid
            else (
                "folder",
                _rel(p.header.path.parent, root),
                _str(ds, "StudyInstanceUID"),
                _str(ds, "Modality"),
            )
        )
        key = (
            *base,
            _str(ds, "FrameOfReferenceUID"),
            f"{p.rows}x{p.columns}",
            ",".join(f"{v:.3f}" for v in p.spacing),
            str(ds.get("SamplesPerPixel", 1)),
        )
        coarse[key].append(p)
    groups: list[list[_Plane]] = []
    for key in sorted(coarse):
        # cluster by orientation (tolerance rather than rounding, which can split at a boundary)
        clusters: list[list[_Plane]] = []
        for p in coarse[key]:
            for cl in clusters:
                if np.allclose(cl[0].iop, p.iop, atol=1e-3):
                    cl.append(p)
                    break
            else:
                clusters.append([p])
        for cl in clusters:
            groups.extend(_split_duplicates(cl))
    return groups


def _positions(group: Sequence[_Plane]) -> np.ndarray:
    n = _normal(group[0].iop)
    return np.array([float(np.dot(n, p.position)) for p in group])


def _has_duplicates(group: Sequence[_Plane], tol: float = 1e-3) -> bool:
    d = np.sort(_positions(group))
    return bool(len(d) > 1 and np.min(np.diff(d)) < tol)


def _split_duplicates(group: list[_Plane]) -> list[list[_Plane]]:
    if not _has_duplicates(group):
        return [group]
    for keyword in _SPLIT_FIELDS:
        parts: dict[str, list[_Plane]] = defaultdict(list)
        for p in group:
            parts[str(p.header.dataset.get(keyword, ""))].append(p)
        if len(parts) > 1 and not any(_has_duplicates(part) for part in parts.values()):
            return [parts[k] for k in sorted(parts)]
    # keep them together: _slices_series refuses the group with a precise message
    return [group]


def _slices_series(group: list[_Plane], root: Path | None) -> DicomSeries:
    first = group[0]
    ds = first.header.dataset
    folder = first.header.path.parent
    uid = _str(ds, "SeriesInstanceUID")
    label = f"series {uid or '(blank SeriesInstanceUID)'} in {folder}"
    n = _normal(first.iop)
    d = _positions(group)
    order = np.argsort(d, kind="stable")
    group = [group[i] for i in order]
    d = d[order]
    if len(group) > 1:
        steps = np.diff(d)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            i = int(dup[0])
            raise ImagingError(
                folder,
                f"{label}: {group[i].header.path.name} and {group[i + 1].header.path.name} have the same slice "
                f"position ({d[i]:.3f} mm along the normal); several volumes share these files "
                "(echoes/time points?) and no header field separates them",
            )
        spacing = float(np.median(steps))
        tol = GAP_TOLERANCE * spacing
        bad = np.flatnonzero(np.abs(steps - spacing) > tol)
        if bad.size:
            i = int(bad[0])
            missing = steps[i] / spacing - 1
            hint = f"; about {round(missing)} slice(s) missing" if missing > 0.5 else ""
            raise ImagingError(
                folder,
                f"{label}: slice spacing is not uniform — gap of {steps[i]:.3f} mm between slices at "
                f"{d[i]:.3f} mm ({group[i].header.path.name}) and {d[i + 1]:.3f} mm "
                f"({group[i + 1].header.path.name}) along the slice normal, expected {spacing:.3f} mm "
                f"(tolerance {GAP_TOLERANCE:.0%}){hint}; {len(group)} slices found",
            )
        positions = np.array([p.position for p in group])
        step = (positions[-1] - positions[0]) / (len(group) - 1)
        predicted = positions[0] + np.arange(len(group))[:, None] * step
        off = np.linalg.norm(positions - predicted, axis=1)
        if off.max() > tol:
            i = int(np.argmax(off))
            raise ImagingError(
                folder,
                f"{label}: slice positions do not lie on one line ({group[i].header.path.name} is "
                f"{off[i]:.3f} mm off, tolerance {tol:.3f} mm)",
            )
    else:
        thick = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        try:
            thickness = float(thick) or 1.0
        except (TypeError, ValueError):
            thickness = 1.0
        step = n * abs(thickness)
    lps = np.eye(4)
    lps[:3, 0] = first.iop[:3] * first.spacing[1]  # along a row: column index i, column spacing
    lps[:3, 1] = first.iop[3:] * first.spacing[0]  # down a column: row index j, row spacing
    lps[:3, 2] = step
    lps[:3, 3] = group[0].position
    key_parts = [
        uid or f"folder:{_rel(folder, root)}:{_str(ds, 'StudyInstanceUID')}",
        _str(ds, "FrameOfReferenceUID"),
        ",".join(f"{v:.3f}" for v in first.iop),
        f"{first.rows}x{first.columns}",
    ]
    for keyword in _SPLIT_FIELDS:
        values = {str(p.header.dataset.get(keyword, "")) for p in group}
        if len(values) == 1 and _has_split_sibling(keyword):
            key_parts.append(f"{keyword}={values.pop()}")
    slices = tuple(_Slice(p.header.path, None, p.position, *_rescale(p.header.dataset)) for p in group)
    return DicomSeries(
        key="|".join(key_parts),
        layout="slices",
        paths=tuple(p.header.path for p in group),
        shape=(first.columns, first.rows, len(group)),
        affine=_LPS_TO_RAS @ lps,
        metadata=_header_metadata(ds),
        slices=slices,
        transfer_syntaxes=tuple(sorted({str(p.header.transfer_syntax) for p in group})),
    )


def _has_split_sibling(keyword: str) -> bool:
    # Echo/temporal fields separate volumes that share a UID; keep them in the key so names differ.
    return keyword in ("EchoNumbers", "TemporalPositionIdentifier")


def _file_key(header: DicomHeader, root: Path | None) -> str:
    ds = header.dataset
    return "|".join(
        [
            _str(ds, "SeriesInstanceUID"),
            _str(ds, "SOPInstanceUID") or f"file:{_rel(header.path, root)}",
            _rel(header.path, root),
        ]
    )


def _mosaic_series(header: DicomHeader, root: Path | None) -> DicomSeries:
    dicomwrappers = _dicomwrappers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = dicomwrappers.wrapper_from_data(header.dataset)
            shape = tuple(int(v) for v in wrapper.image_shape)  # (rows, cols, slices)
    except Exception as exc:
        raise ImagingError(
            header.path, f"Siemens mosaic whose CSA header cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not getattr(wrapper, "is_mosaic", False) or len(shape) != 3:
        raise ImagingError(
            header.path, "ImageType says MOSAIC but the CSA header gives no NumberOfImagesInMosaic"
        )
    ds = header.dataset
    slope, intercept = _rescale(ds)
    return DicomSeries(
        key=_file_key(header, root),
        layout="mosaic",
        paths=(header.path,),
        shape=(shape[1], shape[0], shape[2]),
        affine=None,
        metadata=_header_metadata(ds),
        slices=(_Slice(header.path, None, np.zeros(3), slope, intercept),),
        transfer_syntaxes=(str(header.transfer_syntax),),
    )


def _dicomwrappers() -> Any:
    """``nibabel.nicom.dicomwrappers``, imported without its "experimental" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers
    return dicomwrappers


def _first_item(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _multiframe_series(header: DicomHeader, root: Path | None) -> DicomSeries:
    """An enhanced multi-frame file (per-frame functional groups give each frame's position)."""
    ds = header.dataset
    path = header.path
    n_frames = int(ds.NumberOfFrames)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise _NoGeometry(
            path,
            f"multi-frame image ({_sop_name(ds)}, {n_frames} frames) without per-frame geometry "
            "(PerFrameFunctionalGroupsSequence) — cannot place its frames in 3-D",
        )

    def lookup(frame: Dataset, sequence: str, keyword: str) -> Any:
        for source in (_first_item(frame, sequence), _first_item(shared, sequence)):
            if source is not None and keyword in source:
                return source.get(keyword)
        return ds.get(keyword)

    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = _floats(lookup(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(lookup(per_frame[0], "PixelMeasuresSequence", "PixelSpacing"), 2)
    if iop is None or spacing is None:
        raise ImagingError(
            path, "multi-frame image without ImageOrientationPatient/PixelSpacing in its functional groups"
        )
    _check_iop(path, iop)
    planes: list[_Plane] = []
    slices: list[_Slice] = []
    for i, frame in enumerate(per_frame):
        ipp = _floats(lookup(frame, "PlanePositionSequence", "ImagePositionPatient"), 3)
        f_iop = _floats(lookup(frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        if ipp is None:
            raise ImagingError(path, f"frame {i + 1} has no ImagePositionPatient")
        if f_iop is not None and not np.allclose(f_iop, iop, atol=1e-3):
            raise ImagingError(
                path, f"frame {i + 1} has a different orientation than frame 1; not one volume"
            )
        slope = lookup(frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(frame, "PixelValueTransformationSequence", "RescaleIntercept")
        planes.append(_Plane(header, iop, spacing, ipp, rows, cols))
        slices.append(
            _Slice(path, i, ipp, float(slope if slope not in (None, "") else 1), float(intercept or 0))
        )
    # reuse the slice-stack checks (sorting, duplicates, gaps, line) on the frames
    base = _slices_series(planes, root)
    normal = _normal(iop)
    order = np.argsort([float(np.dot(normal, s.position)) for s in slices], kind="stable")
    return DicomSeries(
        key=_file_key(header, root),
        layout="multiframe",
        paths=(path,),
        shape=(cols, rows, n_frames),
        affine=base.affine,
        metadata=_header_metadata(ds),
        slices=tuple(slices[i] for i in order),
        transfer_syntaxes=(str(header.transfer_syntax),),
    )


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def _read_full(path: Path) -> Dataset:
    try:
        with open(path, "rb") as fh:
            has_preamble = fh.read(132)[128:132] == b"DICM"
        return pydicom.dcmread(path, force=not has_preamble)
    except Exception as exc:
        raise ImagingError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc


def _is_decode_error(exc: Exception) -> bool:
    return not isinstance(exc, (ImagingError, MemoryError))


def _decode_message(ts: UID | None, exc: Exception) -> str:
    syntax = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
    return f"cannot decode pixel data (transfer syntax {syntax}): {type(exc).__name__}: {exc}"


def _decode(path: Path, ds: Dataset | None = None) -> np.ndarray:
    """The raw stored values of ``path`` (or of its data set ``ds`` read already): ``(rows,
    cols[, 3])`` or ``(frames, rows, cols[, 3])``."""
    if ds is None:
        ds = _read_full(path)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImagingError(path, f"DICOM image ({_sop_name(ds)}) has no pixel data")
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta else None
    plain = _plain_pixels(ds)
    if plain is not None:
        return plain
    try:
        # native pixel data: a read-only view of the element's bytes (the caller copies it into
        # the volume anyway), instead of pydicom's extra writeable copy; the values are the same
        ds.pixel_array_options(view_only=True)
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImagingError(path, _decode_message(ts, exc)) from exc


_PLAIN_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _plain_pixels(ds: Dataset) -> np.ndarray | None:
    """The pixels of the simplest and commonest case read straight from the element's bytes (a
    read-only view): one frame, one sample, little-endian native syntax, 8/16/32 bits all used
    (BitsStored == BitsAllocated: no unused bits to mask or sign-extend), monochrome. Exactly
    what pydicom's ``pixel_array`` returns for it, without its per-call overhead (~2 ms a slice);
    ``None`` for anything else (pydicom decodes it)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _PLAIN_SYNTAXES:
        return None
    try:
        data = ds.get("PixelData")
        bits = int(ds.get("BitsAllocated", 0) or 0)
        stored = int(ds.get("BitsStored", 0) or 0)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        signed = int(ds.get("PixelRepresentation", 0) or 0)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    except (TypeError, ValueError):
        return None
    if (not isinstance(data, bytes) or bits not in (8, 16, 32) or stored != bits or samples != 1 or frames != 1
            or signed not in (0, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2") or rows < 1 or cols < 1
            or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = rows * cols
    if len(data) < count * dtype.itemsize:
        return None  # short pixel data: pydicom's message
    return np.frombuffer(data, dtype=dtype, count=count).reshape(rows, cols)


def _stack_and_rescale(
    planes: Sequence[np.ndarray], slopes: Sequence[float], intercepts: Sequence[float]
) -> np.ndarray:
    """Stack 2-D planes ``(rows, cols[, 3])`` into ``(cols, rows, slices[, 3])`` with rescale applied.

    Grey-level volumes are built in Fortran order: each plane (rows x cols, C order) is then one
    contiguous block of the array, and the NIfTI file (Fortran order too) is written without a
    transposing copy. The values and dtype are those of stacking then rescaling the whole array."""
    if not planes or planes[0].ndim != 2:
        return _stack_and_rescale_c(planes, slopes, intercepts)
    slope = np.asarray(slopes, dtype=np.float64)
    inter = np.asarray(intercepts, dtype=np.float64)
    raw = np.result_type(*planes)
    rows, cols = planes[0].shape
    shape = (cols, rows, len(planes))

    def fill(dtype: Any, value: Any) -> np.ndarray:
        out = np.empty(shape, dtype=dtype, order="F")
        for k, plane in enumerate(planes):
            out[:, :, k] = value(k, plane).T
        return out

    if np.all(slope == 1) and np.all(inter == 0):
        return fill(raw, lambda k, p: p)
    integral = np.all(slope == np.round(slope)) and np.all(inter == np.round(inter))
    if integral and np.issubdtype(raw, np.integer):
        s64, i64 = slope.astype(np.int64), inter.astype(np.int64)
        lo, hi = 0, 0
        if planes[0].size:
            ends = []
            for k, p in enumerate(planes):  # a plane's extremes are those of its stored values
                ends += [int(p.min()) * int(s64[k]) + int(i64[k]), int(p.max()) * int(s64[k]) + int(i64[k])]
            lo, hi = min(ends), max(ends)
        dtype: Any = np.int64
        for candidate in (np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                dtype = candidate
                break
        # Integer arithmetic in the result's own type: numpy wraps modulo 2**bits, and every
        # exact result lies in that type's range (checked above), so the wrapped result is the
        # exact one — as computing in int64 then narrowing, in one pass over narrow data.
        out = np.empty(shape, dtype=dtype, order="F")
        wrap = np.iinfo(dtype).bits
        for k, plane in enumerate(planes):
            dst = out[:, :, k].T
            np.copyto(dst, plane, casting="unsafe")
            if s64[k] != 1:
                np.multiply(dst, _wrapped(int(s64[k]), wrap, dtype), out=dst, casting="unsafe")
            if i64[k] != 0:
                np.add(dst, _wrapped(int(i64[k]), wrap, dtype), out=dst, casting="unsafe")
        return out
    return fill(np.float32, lambda k, p: (p.astype(np.float64) * slope[k] + inter[k]).astype(np.float32))


def _wrapped(value: int, bits: int, dtype: Any) -> Any:
    """``value`` modulo ``2**bits`` as a scalar of the signed integer ``dtype``."""
    value %= 1 << bits
    if value >= 1 << (bits - 1):
        value -= 1 << bits
    return np.dtype(dtype).type(value)


def _stack_and_rescale_c(
    planes: Sequence[np.ndarray], slopes: Sequence[float], intercepts: Sequence[float]
) -> np.ndarray:
    """`_stack_and_rescale` for colour planes (``(rows, cols, 3)``): a C-ordered array."""
    stacked = np.stack([np.swapaxes(p, 0, 1) for p in planes], axis=2)
    slope = np.asarray(slopes, dtype=np.float64)
    inter = np.asarray(intercepts, dtype=np.float64)
    if np.all(slope == 1) and np.all(inter == 0):
        return np.ascontiguousarray(stacked)
    shape = (1, 1, len(planes)) + (1,) * (stacked.ndim - 3)
    integral = np.all(slope == np.round(slope)) and np.all(inter == np.round(inter))
    if integral and np.issubdtype(stacked.dtype, np.integer):
        values = stacked.astype(np.int64) * slope.astype(np.int64).reshape(shape) + inter.astype(
            np.int64
        ).reshape(shape)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return values.astype(dtype)
        return values
    return (stacked.astype(np.float64) * slope.reshape(shape) + inter.reshape(shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------------


def read_dicom_series(paths: str | Path | Iterable[str | Path]) -> Volume:
    """Read exactly one DICOM volume from a folder, a file, or a list of files.

    Raises:
        ImagingError: the first problem found, or when the files hold no volume or several.
    """
    if isinstance(paths, (str, Path)):
        base = Path(paths)
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        where: Path = base
    else:
        files = [Path(p) for p in paths]
        where = files[0].parent if files else Path(".")
    if not files:
        raise ImagingError(where, "no files")
    scan = scan_dicom(files)
    if scan.errors:
        raise scan.errors[0]
    if not scan.series:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:3])
        raise ImagingError(where, f"no DICOM image series found ({reasons or 'nothing readable'})")
    if len(scan.series) > 1:
        names = ", ".join(s.name for s in scan.series)
        raise ImagingError(where, f"{len(scan.series)} DICOM volumes found ({names}); expected one")
    return scan.series[0].read()


@dataclass
class PartsRead:
    """What `read_dicom_parts` read: the volume, and each part's data set (aligned with the
    parts; pixel data included) and SOPInstanceUID in slice order."""

    volume: Volume
    datasets: list[Dataset]
    sop_uids_in_slice_order: list[str]
    header_ends: list[int | None]
    """Per part: the offset of its pixel data (see `DicomHeader.pixel_offset`); ``None``
    where not known (deflated) or for an unreadable part."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: ``parse`` (the instances' data sets), ``scan`` (grouping, geometry),
    ``decode`` (pixels, stacked and rescaled into the volume)."""
    parts: list[bytes] = field(default_factory=list, repr=False)
    """The instances as given."""

    def header_bytes(self, n: int, part: bytes) -> bytes | None:
        """Part ``n`` (``part``) without its pixel data, a DICOM file of its header; ``None``
        where unknown: write ``datasets[n]`` without its pixel data then."""
        end = self.header_ends[n]
        return None if end is None else part[:end]


def read_dicom_parts(parts: Iterable[bytes], where: str = "DICOM instances") -> PartsRead:
    """Read exactly one DICOM volume from in-memory instances (e.g. the parts of a WADO-RS
    answer), each parsed once, with the same grouping, geometry, gap and rescale rules as
    `read_dicom_series` on the same files — so the voxels are identical to a local import.

    ``parts`` may be a generator (e.g. over a WADO-RS answer still arriving): each part is parsed
    as it comes, so parsing overlaps the transfer. Non-image parts (SEG, SR, ...) are ignored as
    `scan_dicom` skips them.

    Raises:
        ImagingError: an unreadable part, no volume or several, or pixel data that fails to
            decode (as `read_dicom_series`; ``where`` names the source in messages).
    """
    parse = 0.0
    headers: list[DicomHeader | ImagingError] = []
    datasets: list[Dataset] = []
    kept: list[bytes] = []
    ends: list[int | None] = []
    by_path: dict[Path, Dataset] = {}
    for n, part in enumerate(parts):
        t = time.perf_counter()
        path = Path(f"part-{n + 1:06d}.dcm")
        kept.append(part)
        try:
            header = header_from_bytes(path, part)
        except ImagingError as exc:
            headers.append(exc)
            continue
        finally:
            parse += time.perf_counter() - t
        headers.append(header)
        datasets.append(header.dataset)
        ends.append(header.pixel_offset)
        by_path[path] = header.dataset
    if not headers:
        raise ImagingError(None, f"{where}: no instances")
    t1 = time.perf_counter()
    scan = _scan_headers(headers, None)
    if scan.errors:
        raise scan.errors[0]
    if not scan.series:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:3])
        raise ImagingError(None, f"{where}: no DICOM image series found ({reasons or 'nothing readable'})")
    if len(scan.series) > 1:
        names = ", ".join(s.name for s in scan.series)
        raise ImagingError(None, f"{where}: {len(scan.series)} DICOM volumes found ({names}); expected one")
    series = scan.series[0]
    series.datasets = by_path
    t2 = time.perf_counter()
    volume = series.read()
    order = [_str(by_path[path], "SOPInstanceUID") for path in dict.fromkeys(sl.path for sl in series.slices)]
    seconds = {"parse": parse, "scan": t2 - t1, "decode": time.perf_counter() - t2}
    return PartsRead(volume, datasets, order, ends, seconds, kept)


def header_from_bytes(path: Path, data: bytes) -> DicomHeader:
    """One in-memory DICOM instance parsed whole (pixel data included, decoded later), as a
    `DicomHeader` named ``path``.

    Raises:
        ImagingError: not DICOM, or unparsable.
    """
    has_preamble = data[128:132] == b"DICM"
    if not has_preamble and data[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        raise ImagingError(path, "not a DICOM instance (no DICM marker at byte 128 and no DICOM tag at the start)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on a corrupt instance
        raise ImagingError(path, f"unreadable DICOM instance ({type(exc).__name__}: {exc})") from exc
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return DicomHeader(path, ds, has_pixels, pixel_offset=_pixel_offset(data, ds))


_SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL",
                        "SS", "ST", "TM", "UI", "UL", "US"})


def _pixel_offset(data: bytes, ds: Dataset) -> int | None:
    """The byte offset in ``data`` of the top-level pixel data element of ``ds`` (parsed from
    ``data``, its pixel element not accessed yet); ``len(data)`` without pixel data; ``None``
    where it is not known (deflated transfer syntax)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
        return None
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # PixelData, FloatPixelData, DoubleFloatPixelData
        if tag not in ds:
            continue
        raw = ds.get_item(tag)
        value_tell = getattr(raw, "value_tell", None)
        if value_tell is None:
            return None
        implicit = bool(getattr(raw, "is_implicit_VR", False))
        vr = str(getattr(raw, "VR", "") or "")
        start = int(value_tell) - (8 if implicit or vr in _SHORT_VRS else 12)
        group, elem = tag >> 16, tag & 0xFFFF
        little = bool(getattr(raw, "is_little_endian", True))
        order: Literal["little", "big"] = "little" if little else "big"
        if start <= 0 or data[start:start + 4] != group.to_bytes(2, order) + elem.to_bytes(2, order):
            return None
        return start
    return len(data)
