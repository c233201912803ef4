"""The source image series a DICOM SEG references: reading its headers and matching a label
grid to its instances (or to the frames of one enhanced multi-frame instance) by geometry.

A label slice ``k`` belongs to the instance whose ImagePositionPatient equals the slice origin
``affine @ (0, 0, k)`` (within a tolerance), and every instance must have the label grid's
orientation, pixel spacing, rows and columns; instance order in a folder is irrelevant. Every
mismatch is an `ImagingError` naming the SeriesInstanceUID (and the SOPInstanceUIDs involved).
Sources a SEG cannot reference (blank UIDs, Siemens mosaics) are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from segloop.imaging.errors import ImagingError
from segloop.imaging.seg_codes import LABELMAP_SEG_SOP_CLASS, SEG_SOP_CLASS
from segloop.imaging.volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_affine(affine: np.ndarray) -> np.ndarray:
    """A voxel -> RAS+ affine ``(4, 4)`` as voxel -> LPS (DICOM patient coordinates)."""
    return _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def float_values(value: Any) -> np.ndarray | None:
    """A multi-valued DICOM number (e.g. ImagePositionPatient) as float64, ``None`` if absent or not numeric."""
    if value is None:
        return None
    try:
        return np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def header_uid(ds: Dataset, keyword: str) -> str:
    """The UID (or other string) ``keyword`` of ``ds``, ``""`` when absent or blank."""
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def first_item(ds: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of ``ds``'s ``sequence``, ``None`` when ``ds`` or the sequence is absent or empty."""
    if ds is None:
        return None
    seq = ds.get(sequence)
    return seq[0] if seq else None


def load_source_headers(source: Path | str | Iterable[Path | str | Dataset]) -> list[Dataset]:
    """DICOM headers (pixel data not read) of a folder (recursive), a file list or datasets.

    Non-image objects (SEG, RTSTRUCT, SR...) and non-DICOM files in a folder are left out.

    Raises:
        ImagingError: a listed file is not readable DICOM, or nothing usable was found.
    """
    from segloop.imaging.dicom_header import looks_like_dicom

    items: list[Path | Dataset]
    where: Path | None = None
    skipped: list[Dataset] = []
    if isinstance(source, (str, Path)):
        where = Path(source)
        if where.is_dir():
            items = [p for p in sorted(where.rglob("*")) if p.is_file() and looks_like_dicom(p)]
        else:
            items = [where]
    else:
        items = [x if isinstance(x, Dataset) else Path(x) for x in source]
    out: list[Dataset] = []
    for item in items:
        if isinstance(item, Dataset):
            ds = item
        else:
            try:
                ds = pydicom.dcmread(item, stop_before_pixels=True)
            except Exception as exc:
                raise ImagingError(item, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        sop_class = header_uid(ds, "SOPClassUID")
        if sop_class in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS):
            continue
        if "ImagePositionPatient" not in ds and not is_enhanced_multiframe(ds):
            skipped.append(ds)
            continue
        out.append(ds)
    if not out:
        why = "no DICOM image instances with ImagePositionPatient (or per-frame plane positions) found"
        if skipped:
            kinds = sorted({_sop_name(ds) for ds in skipped})
            why += f" among {len(skipped)} instance(s) of {', '.join(kinds)}"
        raise ImagingError(where, why)
    return out


def _sop_name(ds: Dataset) -> str:
    sop = header_uid(ds, "SOPClassUID")
    return UID(sop).name if sop else "blank SOP class"


def is_enhanced_multiframe(ds: Dataset) -> bool:
    """A multi-frame image whose frames carry their positions (enhanced CT/MR/PET...)."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return False
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    return frames > 1 and per_frame is not None and len(per_frame) == frames


def _is_mosaic(ds: Dataset) -> bool:
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _frame_geometry(ds: Dataset, i: int, keyword: str, sequence: str) -> Any:
    """``keyword`` of frame ``i`` of an enhanced multi-frame image (per-frame, then shared groups)."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[i], first_item(ds, "SharedFunctionalGroupsSequence")):
        item = first_item(groups, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return ds.get(keyword)


def select_series(headers: Sequence[Dataset], series_uid: str | None) -> tuple[str, list[Dataset]]:
    by_series: dict[str, list[Dataset]] = {}
    for ds in headers:
        by_series.setdefault(header_uid(ds, "SeriesInstanceUID"), []).append(ds)
    if series_uid:
        if series_uid not in by_series:
            found = ", ".join(sorted(by_series)) or "none"
            raise ImagingError(
                None,
                f"source DICOM series {series_uid} not found among the given instances (series found: {found})",
            )
        return series_uid, by_series[series_uid]
    if len(by_series) != 1:
        raise ImagingError(
            None,
            f"the source instances belong to {len(by_series)} series ({', '.join(sorted(by_series))}); "
            "give the label's series_uid to choose one",
        )
    uid = next(iter(by_series))
    return uid, by_series[uid]


def refuse_unreferenceable(series_uid: str, instances: Sequence[Dataset]) -> None:
    """Refuse, with the real reason, sources a SEG cannot reference."""
    blank = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID")
             if any(not header_uid(ds, k) for ds in instances)]
    if blank:
        raise ImagingError(
            None,
            f"the source series has blank UIDs ({', '.join(blank)} empty in its DICOM headers, as in heavily "
            "de-identified data; segloop import --deidentify replaces UIDs but leaves blank ones blank): a DICOM "
            "SEG references its source images by these UIDs, so none can be made for it; export the label as "
            "NIfTI or NRRD instead",
        )
    mosaics = [ds for ds in instances if _is_mosaic(ds)]
    if mosaics:
        ds = mosaics[0]
        raise ImagingError(
            None,
            f"source instance {header_uid(ds, 'SOPInstanceUID')} of series {series_uid} is a Siemens mosaic (all slices "
            f"tiled in one {ds.get('Rows')}x{ds.get('Columns')} image with one position): a DICOM SEG places each "
            "frame at an image plane of its source, and a mosaic's slices are not planes of their own in DICOM, "
            "so segloop cannot export a SEG for it; export the label as NIfTI or NRRD instead",
        )


def match_frames(label: Volume, series_uid: str, ds: Dataset, tolerance: float) -> list[int]:
    """For an enhanced multi-frame source: the label slice ``k`` of each source frame (by the
    frames' plane positions), checking the whole grid."""
    cols, rows, n_slices = label.shape
    lps = lps_affine(label.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    sop = header_uid(ds, "SOPInstanceUID")
    what = f"label grid {label.shape} does not match source series {series_uid} (multi-frame instance {sop})"
    if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
        raise ImagingError(None, f"{what}: frames are {ds.Rows} rows x {ds.Columns} columns, label slices {rows} x {cols}")
    n_frames = int(ds.NumberOfFrames)
    if n_frames != n_slices:
        raise ImagingError(None, f"{what}: {n_frames} frames, the label {n_slices} slices")
    out: list[int] = []
    used: set[int] = set()
    for i in range(n_frames):
        iop = float_values(_frame_geometry(ds, i, "ImageOrientationPatient", "PlaneOrientationSequence"))
        ps = float_values(_frame_geometry(ds, i, "PixelSpacing", "PixelMeasuresSequence"))
        ipp = float_values(_frame_geometry(ds, i, "ImagePositionPatient", "PlanePositionSequence"))
        if iop is None or iop.shape != (6,) or not (
            np.allclose(iop[:3], row_dir, atol=1e-3) and np.allclose(iop[3:], col_dir, atol=1e-3)
        ):
            raise ImagingError(None, f"{what}: frame {i + 1} has orientation {None if iop is None else iop.tolist()}")
        if ps is None or not np.allclose(ps, [spacing[1], spacing[0]], atol=1e-3):
            raise ImagingError(None, f"{what}: frame {i + 1} has pixel spacing {None if ps is None else ps.tolist()}")
        if ipp is None or ipp.shape != (3,):
            raise ImagingError(None, f"{what}: frame {i + 1} has no ImagePositionPatient")
        k_float = np.linalg.solve(lps[:3, :3], ipp - lps[:3, 3])
        k = int(round(float(k_float[2])))
        origin = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        if not 0 <= k < n_slices or np.linalg.norm(ipp - origin) > tolerance or k in used:
            raise ImagingError(None, f"{what}: frame {i + 1} at {np.round(ipp, 3).tolist()} LPS mm is at no label slice")
        used.add(k)
        out.append(k)
    return out


def match_instances(
    label: Volume, series_uid: str, instances: Sequence[Dataset], tolerance: float
) -> list[Dataset]:
    """The instance for each label slice ``k`` (by ImagePositionPatient), checking the whole grid."""
    cols, rows, n_slices = label.shape
    lps = lps_affine(label.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]
    col_dir = lps[:3, 1] / spacing[1]
    what = f"label grid {label.shape} does not match source series {series_uid}"
    for ds in instances:
        sop = header_uid(ds, "SOPInstanceUID")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImagingError(
                None,
                f"source instance {sop} of series {series_uid} is multi-frame; only single-frame series are supported",
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ImagingError(
                None,
                f"{what}: instance {sop} is {ds.Rows} rows x {ds.Columns} columns, label slices are {rows} x {cols}",
            )
        iop = float_values(ds.get("ImageOrientationPatient"))
        if (
            iop is None
            or iop.shape != (6,)
            or not (np.allclose(iop[:3], row_dir, atol=1e-3) and np.allclose(iop[3:], col_dir, atol=1e-3))
        ):
            raise ImagingError(
                None,
                f"{what}: instance {sop} has orientation {None if iop is None else iop.tolist()}, label has {np.round(np.r_[row_dir, col_dir], 5).tolist()}",
            )
        ps = float_values(ds.get("PixelSpacing"))
        if ps is None or not np.allclose(ps, [spacing[1], spacing[0]], atol=1e-3):
            raise ImagingError(
                None,
                f"{what}: instance {sop} has pixel spacing {None if ps is None else ps.tolist()}, label has {[round(float(spacing[1]), 6), round(float(spacing[0]), 6)]}",
            )
    if len(instances) != n_slices:
        raise ImagingError(
            None, f"{what}: the series has {len(instances)} instances, the label {n_slices} slices"
        )
    positions = np.array([float_values(ds.ImagePositionPatient) for ds in instances], dtype=np.float64)
    chosen: list[Dataset] = []
    used: set[int] = set()
    for k in range(n_slices):
        origin = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        dist = np.linalg.norm(positions - origin, axis=1)
        best = int(np.argmin(dist))
        if dist[best] > tolerance or best in used:
            raise ImagingError(
                None,
                f"{what}: no instance at the position of label slice {k} ({np.round(origin, 3).tolist()} LPS mm; "
                f"nearest is {header_uid(instances[best], 'SOPInstanceUID')} at {dist[best]:.3f} mm)",
            )
        used.add(best)
        chosen.append(instances[best])
    return chosen
