"""DICOM Segmentation (SEG) objects in and out, with highdicom.

Writing (`write_dicom_seg`)
---------------------------
A label map on the grid of a DICOM image series (as `segloop.imaging.dicom.read_dicom_series`
produces it: array ``(columns, rows, slices)``, voxel -> RAS+ affine) becomes a BINARY SEG:

* one segment per class value present in the label (background 0 excepted), numbered 1..N in
  increasing class value, labelled with the class name and coloured with the class's RGB
  converted to a recommended display CIELab value (sRGB, D65; `highdicom.color.CIELabColor`);
* each label slice is mapped back to its source instance **by geometry**: the slice's origin
  ``affine @ (0, 0, k)`` must equal one instance's ImagePositionPatient (within
  `position_tolerance`), and every instance must have the label grid's orientation, pixel
  spacing, rows and columns. Instance order in the folder is irrelevant. A label grid that
  does not match the series (other shape, other positions, other orientation) is refused with
  an `ImagingError` naming the SeriesInstanceUID (and the SOPInstanceUIDs involved);
* segmented property codes follow `segment_codes`: a class name that is the meaning of a
  concept in the DICOM segmentation-type context groups (CID 7166 tissue, CID 7159 lesion,
  CID 7192 anatomical structure, CID 7157/7158 physical objects) gets that SCT concept as its
  type and the group's category (Tissue, Morphologically Abnormal Structure, Anatomical
  Structure, Physical Object); any other name gets the generic category and type
  "Tissue" (SCT 85756007), as dcmqi does for unnamed segments. Callers may pass explicit codes.

Only single-frame source series are supported for writing (multi-frame sources are refused).

Reading (`read_dicom_seg`)
--------------------------
A SEG (BINARY, FRACTIONAL or LABELMAP) that references an already-read image series is turned
into a label map on that series' grid. Each frame is placed by its ImagePositionPatient (not by
its references), after checking the frame of reference, the referenced series, orientation,
pixel spacing and matrix size; any mismatch is an `ImagingError` naming the SEG's
SOPInstanceUID and the series UIDs. FRACTIONAL frames count a voxel as inside a segment when
its value is at least half of MaximumFractionalValue.

Overlap rule: where several segments cover a voxel, **the highest segment number wins** (a
later segment is drawn over earlier ones, as viewers do when they paint segments in order);
the number of voxels covered by two or more segments is reported as
`SegLabelMap.overlap_voxels` so callers can tell the user what was lost. ``on_overlap="error"``
refuses such SEGs instead.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

ClassSpec = tuple[int, str, tuple[int, int, int]]
"""A label class as ``(value, name, (r, g, b))``; value 0 is background."""
CodePair = tuple[Code, Code]
"""``(segmented property category, segmented property type)``."""

TISSUE = Code("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
AI_FAMILY = Code("123110", "DCM", "Artificial Intelligence")
"""Algorithm family (CID 7162) recorded for model-made segments."""
GENERIC_CODES: CodePair = (TISSUE, TISSUE)
"""Category and type for a class whose name is not a known concept."""

# (context group, category) in the order they are searched.
_CODE_GROUPS: tuple[tuple[str, Code], ...] = (
    ("cid7166", TISSUE),
    ("cid7159", ABNORMAL_STRUCTURE),
    ("cid7192", ANATOMICAL_STRUCTURE),
    ("cid7157", PHYSICAL_OBJECT),
    ("cid7158", PHYSICAL_OBJECT),
)


def _norm_name(text: str) -> str:
    """``"Left_Kidney"``, ``"left kidney"``, ``"LeftKidney"`` -> ``"leftkidney"``."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@lru_cache(maxsize=1)
def _known_codes() -> dict[str, CodePair]:
    from pydicom.sr.codedict import codes

    table: dict[str, CodePair] = {}
    for cid, category in _CODE_GROUPS:
        group = getattr(codes, cid)
        for keyword in group.dir():
            code = getattr(group, keyword)
            if code.scheme_designator != "SCT":
                continue
            for key in (_norm_name(code.meaning), _norm_name(keyword)):
                table.setdefault(key, (category, code))
    return table


def segment_codes(name: str) -> CodePair:
    """The segmented property category and type for a class called ``name`` (module rule)."""
    return _known_codes().get(_norm_name(name), GENERIC_CODES)


# --------------------------------------------------------------------------------------------
# Source series
# --------------------------------------------------------------------------------------------


def _lps(affine: np.ndarray) -> np.ndarray:
    return _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)


def _floats(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    try:
        return np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


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
        sop_class = _uid(ds, "SOPClassUID")
        if sop_class in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS):
            continue
        if "ImagePositionPatient" not in ds and not _is_enhanced_multiframe(ds):
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
    sop = _uid(ds, "SOPClassUID")
    return UID(sop).name if sop else "blank SOP class"


def _is_enhanced_multiframe(ds: Dataset) -> bool:
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
    for groups in (ds.PerFrameFunctionalGroupsSequence[i], _first(ds, "SharedFunctionalGroupsSequence")):
        item = _first(groups, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return ds.get(keyword)


def _select_series(headers: Sequence[Dataset], series_uid: str | None) -> tuple[str, list[Dataset]]:
    by_series: dict[str, list[Dataset]] = {}
    for ds in headers:
        by_series.setdefault(_uid(ds, "SeriesInstanceUID"), []).append(ds)
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


def _refuse_unreferenceable(series_uid: str, instances: Sequence[Dataset]) -> None:
    """Refuse, with the real reason, sources a SEG cannot reference."""
    blank = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID")
             if any(not _uid(ds, k) for ds in instances)]
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
            f"source instance {_uid(ds, 'SOPInstanceUID')} of series {series_uid} is a Siemens mosaic (all slices "
            f"tiled in one {ds.get('Rows')}x{ds.get('Columns')} image with one position): a DICOM SEG places each "
            "frame at an image plane of its source, and a mosaic's slices are not planes of their own in DICOM, "
            "so segloop cannot export a SEG for it; export the label as NIfTI or NRRD instead",
        )


def _match_frames(label: Volume, series_uid: str, ds: Dataset, tolerance: float) -> list[int]:
    """For an enhanced multi-frame source: the label slice ``k`` of each source frame (by the
    frames' plane positions), checking the whole grid."""
    cols, rows, n_slices = label.shape
    lps = _lps(label.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    sop = _uid(ds, "SOPInstanceUID")
    what = f"label grid {label.shape} does not match source series {series_uid} (multi-frame instance {sop})"
    if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
        raise ImagingError(None, f"{what}: frames are {ds.Rows} rows x {ds.Columns} columns, label slices {rows} x {cols}")
    n_frames = int(ds.NumberOfFrames)
    if n_frames != n_slices:
        raise ImagingError(None, f"{what}: {n_frames} frames, the label {n_slices} slices")
    out: list[int] = []
    used: set[int] = set()
    for i in range(n_frames):
        iop = _floats(_frame_geometry(ds, i, "ImageOrientationPatient", "PlaneOrientationSequence"))
        ps = _floats(_frame_geometry(ds, i, "PixelSpacing", "PixelMeasuresSequence"))
        ipp = _floats(_frame_geometry(ds, i, "ImagePositionPatient", "PlanePositionSequence"))
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


def _match_instances(
    label: Volume, series_uid: str, instances: Sequence[Dataset], tolerance: float
) -> list[Dataset]:
    """The instance for each label slice ``k`` (by ImagePositionPatient), checking the whole grid."""
    cols, rows, n_slices = label.shape
    lps = _lps(label.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]
    col_dir = lps[:3, 1] / spacing[1]
    what = f"label grid {label.shape} does not match source series {series_uid}"
    for ds in instances:
        sop = _uid(ds, "SOPInstanceUID")
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
        iop = _floats(ds.get("ImageOrientationPatient"))
        if (
            iop is None
            or iop.shape != (6,)
            or not (np.allclose(iop[:3], row_dir, atol=1e-3) and np.allclose(iop[3:], col_dir, atol=1e-3))
        ):
            raise ImagingError(
                None,
                f"{what}: instance {sop} has orientation {None if iop is None else iop.tolist()}, label has {np.round(np.r_[row_dir, col_dir], 5).tolist()}",
            )
        ps = _floats(ds.get("PixelSpacing"))
        if ps is None or not np.allclose(ps, [spacing[1], spacing[0]], atol=1e-3):
            raise ImagingError(
                None,
                f"{what}: instance {sop} has pixel spacing {None if ps is None else ps.tolist()}, label has {[round(float(spacing[1]), 6), round(float(spacing[0]), 6)]}",
            )
    if len(instances) != n_slices:
        raise ImagingError(
            None, f"{what}: the series has {len(instances)} instances, the label {n_slices} slices"
        )
    positions = np.array([_floats(ds.ImagePositionPatient) for ds in instances], dtype=np.float64)
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
                f"nearest is {_uid(instances[best], 'SOPInstanceUID')} at {dist[best]:.3f} mm)",
            )
        used.add(best)
        chosen.append(instances[best])
    return chosen


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a SEG, as read or written.

    Attributes:
        number: SegmentNumber (1..N).
        label: SegmentLabel (the class name when segloop wrote it).
        color: RGB from the recommended display CIELab value, ``None`` when absent.
        category, type: segmented property category and type codes.
        value: the label-map value this segment was written from (writing) or is read as
            (reading: equal to ``number``).
        voxels: voxels covered by this segment (before overlap resolution when reading).
    """

    number: int
    label: str
    color: tuple[int, int, int] | None
    category: Code
    type: Code
    value: int
    voxels: int


def stable_seg_uids(*key: object) -> tuple[str, str]:
    """``(series_instance_uid, sop_instance_uid)`` derived from ``key`` (e.g. source series,
    image id, revision and its creation time): the SEG of one label revision always has the
    same UIDs, so sending it again replaces nothing and duplicates nothing on the PACS."""
    sources = ["segloop-seg", *(str(k) for k in key)]
    return generate_uid(entropy_srcs=[*sources, "series"]), generate_uid(entropy_srcs=[*sources, "instance"])


def write_dicom_seg(
    label: Volume,
    classes: Sequence[ClassSpec],
    source: Path | str | Iterable[Path | str | Dataset],
    out_path: Path | str | None = None,
    *,
    series_uid: str | None = None,
    series_description: str = "segloop segmentation",
    series_number: int = 900,
    algorithm: tuple[str, str] | None = None,
    content_creator: str | None = None,
    codes: Mapping[int, CodePair] | None = None,
    position_tolerance: float | None = None,
    uids: tuple[str, str] | None = None,
) -> tuple[Dataset, list[SegmentInfo]]:
    """Write ``label`` as a BINARY DICOM SEG referencing its source series.

    Args:
        label: label map ``(columns, rows, slices)`` on the source series' grid (integer values).
        classes: ``(value, name, (r, g, b))`` for every non-zero value present (more may be given).
        source: the source series' DICOM files (folder, file list or datasets; headers suffice).
        out_path: where to write the SEG (atomically); ``None`` writes nothing.
        series_uid: source SeriesInstanceUID; defaults to ``label.metadata["series_uid"]``,
            or the only series among ``source``.
        series_description, series_number: of the new SEG series.
        algorithm: ``(name, version)`` of the model that produced the label; the segments are
            then AUTOMATIC with an algorithm identification, otherwise MANUAL.
        content_creator: ContentCreatorName (a person name, e.g. ``"Doe^Jane"``).
        codes: explicit ``(category, type)`` per class value; others follow `segment_codes`.
        position_tolerance: mm allowed between a slice origin and an ImagePositionPatient
            (default 1 % of the smallest voxel size, at least 0.001 mm).
        uids: ``(series_instance_uid, sop_instance_uid)`` of the SEG (`stable_seg_uids`);
            new random ones by default.

    Returns:
        The SEG dataset and its segments.

    Raises:
        ImagingError: label and series do not match (naming the UIDs), values without a class,
            an empty label, or a source series that cannot be used.
    """
    if label.array.ndim != 3:
        raise ImagingError(None, f"a label map must be 3-D, got shape {label.array.shape}")
    arr = np.asarray(label.array)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ImagingError(None, "label values must be whole numbers")
        arr = rounded
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ImagingError(None, f"label values must be in 0..65535 (found {int(arr.min())}..{int(arr.max())})")
    arr = np.ascontiguousarray(arr, dtype=np.uint16)  # small and exact: counting below is one pass
    counts = np.bincount(arr.reshape(-1), minlength=1)
    present = [int(v) for v in np.flatnonzero(counts) if v != 0]
    by_value = {int(v): (str(n), _rgb(rgb)) for v, n, rgb in classes}
    missing = [v for v in present if v not in by_value]
    if missing:
        raise ImagingError(None, f"label values {missing} have no class (classes: {sorted(by_value)})")
    if not present:
        raise ImagingError(None, "the label is empty (background only); a SEG needs at least one segment")

    wanted_series = series_uid or str(label.metadata.get("series_uid") or "") or None
    uid, instances = _select_series(load_source_headers(source), wanted_series)
    _refuse_unreferenceable(uid, instances)
    tol = position_tolerance if position_tolerance is not None else max(1e-3, 0.01 * min(label.spacing))
    if len(instances) == 1 and _is_enhanced_multiframe(instances[0]):
        # one enhanced multi-frame instance: the SEG's frames follow the source's frames
        ordered = instances
        slice_of_frame = _match_frames(label, uid, instances[0], tol)
    else:
        ordered = _match_instances(label, uid, instances, tol)
        slice_of_frame = list(range(len(ordered)))
    frame_of_ref = {_uid(ds, "FrameOfReferenceUID") for ds in ordered}
    if len(frame_of_ref) != 1 or "" in frame_of_ref:
        raise ImagingError(
            None, f"source series {uid} has no single FrameOfReferenceUID ({sorted(frame_of_ref)})"
        )

    seg_numbers = {v: i + 1 for i, v in enumerate(present)}
    lut = np.zeros(max(present) + 1, dtype=np.uint16)
    for v, n in seg_numbers.items():
        lut[v] = n
    frames = np.ascontiguousarray(np.transpose(lut[arr], (2, 1, 0)))  # (slices, rows, columns)
    frames = frames[slice_of_frame]
    dtype = np.uint8 if len(present) < 256 else np.uint16
    frames = frames.astype(dtype)

    algo_type = (
        hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm else hd.seg.SegmentAlgorithmTypeValues.MANUAL
    )
    algo_id = (
        hd.AlgorithmIdentificationSequence(
            name=algorithm[0], version=algorithm[1] or "unknown", family=AI_FAMILY
        )
        if algorithm
        else None
    )
    descriptions: list[hd.seg.SegmentDescription] = []
    infos: list[SegmentInfo] = []
    for v in present:
        name, rgb = by_value[v]
        category, prop = (codes or {}).get(v) or segment_codes(name)
        color = hd.color.CIELabColor.from_rgb(*rgb)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=seg_numbers[v],
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=algo_type,
                algorithm_identification=algo_id,
                display_color=color,
            )
        )
        infos.append(SegmentInfo(seg_numbers[v], name, rgb, category, prop, v, int(counts[v])))

    from segloop import __version__ as version

    try:
        with warnings.catch_warnings():
            # source headers often hold single-component person names; highdicom warns about them
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            seg = hd.seg.Segmentation(
                source_images=[_sanitized(d) for d in ordered],
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=uids[0] if uids else generate_uid(),
                series_number=series_number,
                sop_instance_uid=uids[1] if uids else generate_uid(),
                instance_number=1,
                manufacturer="segloop",
                manufacturer_model_name="segloop",
                software_versions=str(version),
                device_serial_number="segloop",
                content_description=series_description[:64],
                content_creator_name=content_creator,
                content_label="SEGLOOP",
                omit_empty_frames=True,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImagingError(None, f"highdicom refused the SEG for series {uid}: {exc}") from exc
    seg.SeriesDescription = series_description[:64]
    if out_path is not None:
        _atomic_save(seg, Path(out_path))
    return seg, infos


def _rgb(value: Sequence[Any]) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in value)
    return (r, g, b)


# Type 2 attributes of the Patient and General Study modules that a SEG copies from its source:
# de-identified sources often lack them (removed instead of emptied); they are added empty.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _sanitized(ds: Dataset) -> Dataset:
    """A copy of a source header that highdicom accepts (blank SpecificCharacterSet removed,
    missing type 2 patient/study attributes added empty)."""
    out = copy.deepcopy(ds)
    if "SpecificCharacterSet" in out and not str(out.SpecificCharacterSet or "").strip():
        del out.SpecificCharacterSet
    for keyword in _TYPE2_COPIED:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _atomic_save(ds: Dataset, path: Path) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentOverlap:
    """Voxels of segment ``dropped`` that segment ``kept`` (a higher number, covering them too)
    took in the label map: what the flattening lost of ``dropped``."""

    kept: int
    dropped: int
    voxels: int

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        def name(n: int) -> str:
            return f"{n} {names[n]!r}" if names and n in names else str(n)

        return f"{self.voxels} voxel(s) of segment {name(self.dropped)} went to segment {name(self.kept)}"

    def to_dict(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"kept": self.kept, "dropped": self.dropped, "voxels": self.voxels}
        if names:
            out.update(kept_label=names.get(self.kept), dropped_label=names.get(self.dropped))
        return out


def _dropped_by_overlap(
    pixels: np.ndarray, placed: Sequence[tuple[int, int, int | None]], out: np.ndarray, threshold: int
) -> list[SegmentOverlap]:
    """Per (kept, dropped) segment pair, the voxels ``dropped`` covered but lost to ``kept`` in
    the flattened map ``out`` (a second pass over the placed frames)."""
    counts: dict[tuple[int, int], int] = {}
    for f, k, number in placed:
        plane = pixels[f].T
        winner = out[:, :, k]
        if number is None:  # label map: each voxel's value is its segment
            values = plane.astype(np.uint16)
            lost = (values > 0) & (values != winner)
            pairs = np.stack([winner[lost], values[lost]]).astype(np.int64)
        else:
            lost = (plane >= threshold) & (winner != number)
            pairs = np.stack([winner[lost], np.full(int(lost.sum()), number)]).astype(np.int64)
        if pairs.shape[1] == 0:
            continue
        unique, n = np.unique(pairs[0] * 65536 + pairs[1], return_counts=True)
        for code, c in zip(unique.tolist(), n.tolist(), strict=True):
            key = (code // 65536, code % 65536)
            counts[key] = counts.get(key, 0) + int(c)
    return [SegmentOverlap(kept, dropped, n) for (kept, dropped), n in sorted(counts.items())]


@dataclass
class SegLabelMap:
    """A SEG turned into a label map on its series' grid.

    Attributes:
        label: uint8/uint16 label map on the image's grid; value = segment number.
        segments: the SEG's segments (``voxels`` counted before overlap resolution).
        overlap_voxels: voxels covered by two or more segments (resolved: highest number wins).
        overlaps: what that flattening dropped, per (kept, dropped) segment pair.
        sop_instance_uid, series_uid: of the SEG.
        referenced_series_uid: the image series it was mapped onto.
    """

    label: Volume
    segments: list[SegmentInfo]
    overlap_voxels: int
    sop_instance_uid: str
    series_uid: str
    referenced_series_uid: str
    notes: list[str] = field(default_factory=list)
    overlaps: list[SegmentOverlap] = field(default_factory=list)


def _first(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _code(item: Dataset | None) -> Code:
    if item is None:
        return GENERIC_CODES[0]
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.get("CodeMeaning", "")))


def _referenced_series(seg: Dataset) -> set[str]:
    refs = {_uid(item, "SeriesInstanceUID") for item in seg.get("ReferencedSeriesSequence", [])}
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        refs |= {_uid(item, "SeriesInstanceUID") for item in study.get("ReferencedSeriesSequence", [])}
    return {r for r in refs if r}


def read_dicom_seg(
    seg: Path | str | Dataset,
    image: Volume,
    *,
    on_overlap: Literal["last", "error"] = "last",
    position_tolerance: float | None = None,
) -> SegLabelMap:
    """Map a SEG onto ``image``'s grid (the image series it references, read with
    `read_dicom_series`; its metadata must carry ``series_uid``).

    Raises:
        ImagingError: not a SEG; it references another series or frame of reference; a frame's
            orientation, spacing, matrix or position does not fit the image grid; overlapping
            segments with ``on_overlap="error"``. The message names the UIDs.
    """
    path: Path | None = None
    if isinstance(seg, Dataset):
        ds = seg
    else:
        path = Path(seg)
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise ImagingError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    sop_class = _uid(ds, "SOPClassUID")
    if sop_class not in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS):
        raise ImagingError(path, f"not a DICOM Segmentation (SOP class {sop_class or 'blank'})")
    seg_uid = _uid(ds, "SOPInstanceUID")
    image_series = str(image.metadata.get("series_uid") or "")
    who = f"SEG {seg_uid}"

    refs = _referenced_series(ds)
    if image_series and refs and image_series not in refs:
        raise ImagingError(
            path, f"{who} references series {', '.join(sorted(refs))}, not the image's series {image_series}"
        )
    image_for = str(image.metadata.get("frame_of_reference_uid") or "")
    seg_for = _uid(ds, "FrameOfReferenceUID")
    if image_for and seg_for and image_for != seg_for:
        raise ImagingError(
            path, f"{who} is in frame of reference {seg_for}, the image series {image_series} in {image_for}"
        )

    cols, rows, n_slices = image.shape
    if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
        raise ImagingError(
            path,
            f"{who} frames are {ds.Rows} x {ds.Columns}, image series {image_series} slices are {rows} x {cols}",
        )
    lps = _lps(image.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    inv = np.linalg.inv(lps)
    tol = position_tolerance if position_tolerance is not None else max(1e-3, 0.01 * float(spacing.min()))
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]

    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame) != n_frames:
        raise ImagingError(
            path, f"{who} has {n_frames} frames but {len(per_frame)} per-frame functional groups"
        )

    def lookup(frame: Dataset, sequence: str, keyword: str) -> Any:
        for src in (_first(frame, sequence), _first(shared, sequence)):
            if src is not None and keyword in src:
                return src.get(keyword)
        return None

    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    is_labelmap = sop_class == LABELMAP_SEG_SOP_CLASS or seg_type == "LABELMAP"
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImagingError(
            path, f"{who}: cannot decode its pixel data ({type(exc).__name__}: {exc})"
        ) from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != n_frames:
        raise ImagingError(path, f"{who}: pixel data holds {pixels.shape[0]} frames, header says {n_frames}")
    threshold = 1
    if seg_type == "FRACTIONAL":
        threshold = max(1, int(np.ceil(float(ds.get("MaximumFractionalValue", 255)) / 2)))

    descriptions = {int(item.SegmentNumber): item for item in ds.get("SegmentSequence", [])}
    if not descriptions:
        raise ImagingError(path, f"{who} has no SegmentSequence")
    max_number = max(descriptions)
    # one boolean volume per segment would be large; count coverage and keep the highest number
    out = np.zeros(image.shape, dtype=np.uint16)
    coverage = np.zeros(image.shape, dtype=np.uint8)
    per_segment = dict.fromkeys(descriptions, 0)
    placed: list[tuple[int, int, int | None]] = []  # (frame, slice, segment; None: a label-map frame)
    for f, frame in enumerate(per_frame):
        iop = _floats(lookup(frame, "PlaneOrientationSequence", "ImageOrientationPatient"))
        if (
            iop is None
            or iop.shape != (6,)
            or not (np.allclose(iop[:3], row_dir, atol=1e-3) and np.allclose(iop[3:], col_dir, atol=1e-3))
        ):
            raise ImagingError(
                path,
                f"{who} frame {f + 1} orientation {None if iop is None else iop.tolist()} does not match "
                f"image series {image_series}",
            )
        ps = _floats(lookup(frame, "PixelMeasuresSequence", "PixelSpacing"))
        if ps is None or not np.allclose(ps, [spacing[1], spacing[0]], atol=1e-3):
            raise ImagingError(
                path,
                f"{who} frame {f + 1} pixel spacing {None if ps is None else ps.tolist()} does not match "
                f"image series {image_series} ({[round(float(spacing[1]), 6), round(float(spacing[0]), 6)]})",
            )
        ipp = _floats(lookup(frame, "PlanePositionSequence", "ImagePositionPatient"))
        if ipp is None or ipp.shape != (3,):
            raise ImagingError(path, f"{who} frame {f + 1} has no ImagePositionPatient")
        idx = inv @ np.r_[ipp, 1.0]
        k = int(round(float(idx[2])))
        origin = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        if not 0 <= k < n_slices or np.linalg.norm(origin - ipp) > tol:
            raise ImagingError(
                path,
                f"{who} frame {f + 1} at {ipp.tolist()} (LPS mm) lies on no slice of image series {image_series} "
                f"(nearest slice index {idx[2]:.3f}, off by {np.linalg.norm(origin - ipp):.3f} mm)",
            )
        plane = pixels[f].T  # (rows, cols) -> (cols, rows)
        if is_labelmap:
            values = plane.astype(np.uint16)
            unknown = sorted(set(np.unique(values).tolist()) - set(descriptions) - {0})
            if unknown:
                raise ImagingError(path, f"{who} frame {f + 1} holds values {unknown} that are no segment")
            mask = values > 0
            for number in np.unique(values[mask]):
                per_segment[int(number)] += int((values == number).sum())
            coverage[:, :, k] += mask.astype(np.uint8)
            out[:, :, k] = np.where(mask, np.maximum(out[:, :, k], values), out[:, :, k])
            placed.append((f, k, None))
            continue
        ident = _first(frame, "SegmentIdentificationSequence") or _first(
            shared, "SegmentIdentificationSequence"
        )
        if ident is None:
            raise ImagingError(path, f"{who} frame {f + 1} names no segment (SegmentIdentificationSequence)")
        number = int(ident.ReferencedSegmentNumber)
        if number not in descriptions:
            raise ImagingError(
                path, f"{who} frame {f + 1} refers to segment {number}, which is not described"
            )
        mask = plane >= threshold
        per_segment[number] += int(mask.sum())
        coverage[:, :, k] = np.minimum(coverage[:, :, k].astype(np.uint16) + mask, 255).astype(np.uint8)
        out[:, :, k] = np.where(mask, np.maximum(out[:, :, k], number), out[:, :, k])
        placed.append((f, k, number))

    overlap = int((coverage > 1).sum())
    if overlap and on_overlap == "error":
        raise ImagingError(path, f"{who}: {overlap} voxels are covered by more than one segment")
    segments: list[SegmentInfo] = []
    for number, item in sorted(descriptions.items()):
        lab = item.get("RecommendedDisplayCIELabValue")
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb() if lab else None
        segments.append(
            SegmentInfo(
                number,
                str(item.get("SegmentLabel", f"segment_{number}")),
                _rgb(rgb) if rgb is not None else None,
                _code(_first(item, "SegmentedPropertyCategoryCodeSequence")),
                _code(_first(item, "SegmentedPropertyTypeCodeSequence")),
                number,
                per_segment[number],
            )
        )
    dtype = np.uint8 if max_number <= 255 else np.uint16
    meta = {
        "series_uid": image_series,
        "seg_sop_instance_uid": seg_uid,
        "seg_series_uid": _uid(ds, "SeriesInstanceUID"),
    }
    overlaps = _dropped_by_overlap(pixels, placed, out, threshold) if overlap else []
    notes = []
    if overlap:
        names = {seg.number: seg.label for seg in segments}
        notes.append(
            f"{overlap} voxels were covered by several segments; the highest segment number was kept: "
            + "; ".join(o.describe(names) for o in overlaps)
        )
    return SegLabelMap(
        label=Volume(out.astype(dtype), image.affine.copy(), meta),
        segments=segments,
        overlap_voxels=overlap,
        overlaps=overlaps,
        sop_instance_uid=seg_uid,
        series_uid=_uid(ds, "SeriesInstanceUID"),
        referenced_series_uid=image_series or (sorted(refs)[0] if refs else ""),
        notes=notes,
    )


def seg_referenced_series(seg: Path | str | Dataset) -> set[str]:
    """The SeriesInstanceUIDs a SEG references (header only)."""
    ds = seg if isinstance(seg, Dataset) else pydicom.dcmread(seg, stop_before_pixels=True)
    return _referenced_series(ds)


def is_dicom_seg(ds: Dataset) -> bool:
    """True for a DICOM Segmentation (binary/fractional or label-map SOP class)."""
    return UID(_uid(ds, "SOPClassUID")) in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS)
