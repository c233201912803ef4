"""Series discovery: DICOM headers grouped into `DicomSeries` (`scan_dicom`).

Each header is classified (a non-image object or a 2-D image without geometry is skipped, a
missing decoder is an error), then single-frame images are grouped by series and geometry and
split where volumes share positions; a Siemens mosaic or an enhanced multi-frame file is a
series on its own. The rules are in `segloop.imaging.dicom` ("Grouping rules").
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from segloop.imaging.dicom_geometry import (
    _check_iop,
    _floats,
    _has_duplicates,
    _Plane,
    _sorted_stack,
    slice_normal,
)
from segloop.imaging.dicom_header import DicomHeader, _sop_name, _str, non_image_reason, read_dicom_header
from segloop.imaging.dicom_pixels import _decoder_problem, _dicomwrappers, _rescale
from segloop.imaging.dicom_series import DicomSeries, _Slice
from segloop.imaging.errors import ImagingError

CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "ST"})
"""Modalities whose images must carry 3-D geometry: without it they are errors, not skipped."""
_SPLIT_FIELDS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "ImageType")


@dataclass
class DicomScan:
    """Result of `scan_dicom`."""

    series: list[DicomSeries] = field(default_factory=list)
    errors: list[ImagingError] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


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
    group, affine = _sorted_stack(group, folder, label)
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
        affine=affine,
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
    normal = slice_normal(iop)
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
