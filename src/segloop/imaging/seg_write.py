"""Writing a label map as a BINARY DICOM SEG that references its source series (`write_dicom_seg`).

The overview (segments, colours, codes, geometry checks) is in `segloop.imaging.dicom_seg`.
Only single-frame source series and single enhanced multi-frame instances are supported.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from segloop.imaging.errors import ImagingError
from segloop.imaging.seg_codes import AI_FAMILY, ClassSpec, CodePair, SegmentInfo, rgb_triplet, segment_codes
from segloop.imaging.seg_source import (
    header_uid,
    is_enhanced_multiframe,
    load_source_headers,
    match_frames,
    match_instances,
    refuse_unreferenceable,
    select_series,
)
from segloop.imaging.volume import Volume


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
    by_value = {int(v): (str(n), rgb_triplet(rgb)) for v, n, rgb in classes}
    missing = [v for v in present if v not in by_value]
    if missing:
        raise ImagingError(None, f"label values {missing} have no class (classes: {sorted(by_value)})")
    if not present:
        raise ImagingError(None, "the label is empty (background only); a SEG needs at least one segment")

    wanted_series = series_uid or str(label.metadata.get("series_uid") or "") or None
    uid, instances = select_series(load_source_headers(source), wanted_series)
    refuse_unreferenceable(uid, instances)
    tol = position_tolerance if position_tolerance is not None else max(1e-3, 0.01 * min(label.spacing))
    if len(instances) == 1 and is_enhanced_multiframe(instances[0]):
        # one enhanced multi-frame instance: the SEG's frames follow the source's frames
        ordered = instances
        slice_of_frame = match_frames(label, uid, instances[0], tol)
    else:
        ordered = match_instances(label, uid, instances, tol)
        slice_of_frame = list(range(len(ordered)))
    frame_of_ref = {header_uid(ds, "FrameOfReferenceUID") for ds in ordered}
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
