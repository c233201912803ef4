"""Reading a DICOM SEG (BINARY, FRACTIONAL or LABELMAP) onto its image series' grid
(`read_dicom_seg`), with the overlap rule and what it dropped.

The overview (frame placement, the overlap rule) is in `segloop.imaging.dicom_seg`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

from segloop.imaging.errors import ImagingError
from segloop.imaging.seg_codes import (
    GENERIC_CODES,
    LABELMAP_SEG_SOP_CLASS,
    SEG_SOP_CLASS,
    SegmentInfo,
    rgb_triplet,
)
from segloop.imaging.seg_source import first_item, float_values, header_uid, lps_affine
from segloop.imaging.volume import Volume


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


def _code(item: Dataset | None) -> Code:
    if item is None:
        return GENERIC_CODES[0]
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.get("CodeMeaning", "")))


def _referenced_series(seg: Dataset) -> set[str]:
    refs = {header_uid(item, "SeriesInstanceUID") for item in seg.get("ReferencedSeriesSequence", [])}
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        refs |= {header_uid(item, "SeriesInstanceUID") for item in study.get("ReferencedSeriesSequence", [])}
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
    sop_class = header_uid(ds, "SOPClassUID")
    if sop_class not in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS):
        raise ImagingError(path, f"not a DICOM Segmentation (SOP class {sop_class or 'blank'})")
    seg_uid = header_uid(ds, "SOPInstanceUID")
    image_series = str(image.metadata.get("series_uid") or "")
    who = f"SEG {seg_uid}"

    refs = _referenced_series(ds)
    if image_series and refs and image_series not in refs:
        raise ImagingError(
            path, f"{who} references series {', '.join(sorted(refs))}, not the image's series {image_series}"
        )
    image_for = str(image.metadata.get("frame_of_reference_uid") or "")
    seg_for = header_uid(ds, "FrameOfReferenceUID")
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
    lps = lps_affine(image.affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    inv = np.linalg.inv(lps)
    tol = position_tolerance if position_tolerance is not None else max(1e-3, 0.01 * float(spacing.min()))
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]

    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame) != n_frames:
        raise ImagingError(
            path, f"{who} has {n_frames} frames but {len(per_frame)} per-frame functional groups"
        )

    def lookup(frame: Dataset, sequence: str, keyword: str) -> Any:
        for src in (first_item(frame, sequence), first_item(shared, sequence)):
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
        iop = float_values(lookup(frame, "PlaneOrientationSequence", "ImageOrientationPatient"))
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
        ps = float_values(lookup(frame, "PixelMeasuresSequence", "PixelSpacing"))
        if ps is None or not np.allclose(ps, [spacing[1], spacing[0]], atol=1e-3):
            raise ImagingError(
                path,
                f"{who} frame {f + 1} pixel spacing {None if ps is None else ps.tolist()} does not match "
                f"image series {image_series} ({[round(float(spacing[1]), 6), round(float(spacing[0]), 6)]})",
            )
        ipp = float_values(lookup(frame, "PlanePositionSequence", "ImagePositionPatient"))
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
        ident = first_item(frame, "SegmentIdentificationSequence") or first_item(
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
                rgb_triplet(rgb) if rgb is not None else None,
                _code(first_item(item, "SegmentedPropertyCategoryCodeSequence")),
                _code(first_item(item, "SegmentedPropertyTypeCodeSequence")),
                number,
                per_segment[number],
            )
        )
    dtype = np.uint8 if max_number <= 255 else np.uint16
    meta = {
        "series_uid": image_series,
        "seg_sop_instance_uid": seg_uid,
        "seg_series_uid": header_uid(ds, "SeriesInstanceUID"),
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
        series_uid=header_uid(ds, "SeriesInstanceUID"),
        referenced_series_uid=image_series or (sorted(refs)[0] if refs else ""),
        notes=notes,
    )


def seg_referenced_series(seg: Path | str | Dataset) -> set[str]:
    """The SeriesInstanceUIDs a SEG references (header only)."""
    ds = seg if isinstance(seg, Dataset) else pydicom.dcmread(seg, stop_before_pixels=True)
    return _referenced_series(ds)


def is_dicom_seg(ds: Dataset) -> bool:
    """True for a DICOM Segmentation (binary/fractional or label-map SOP class)."""
    return UID(header_uid(ds, "SOPClassUID")) in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS)
