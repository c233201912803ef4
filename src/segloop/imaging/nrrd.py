"""Reading and writing NRRD (``.nrrd``, ``.nhdr`` + data, and 3D Slicer's ``.seg.nrrd``) with pynrrd.

Geometry
--------
NRRD gives each axis a world vector (``space directions``, one row per axis) and the centre of
voxel 0 (``space origin``) in the frame named by ``space``. Reading accepts the 3-D frames
``right-anterior-superior`` (RAS), ``left-posterior-superior`` (LPS) and
``left-anterior-superior`` (LAS) and converts them to segloop's voxel -> RAS+ affine by
flipping signs; a file without ``space directions``/``space origin``, or in another space
(``scanner-xyz``, ``3D-right-handed``...), is refused: its placement in the patient is unknown.
Writing uses LPS by default (what 3D Slicer writes); RAS on request. Both round-trip the
affine exactly (to float64 text precision).

Slicer segmentations (``.seg.nrrd``)
------------------------------------
A Slicer segmentation is a label map with per-segment key/value fields ``SegmentN_Name``,
``SegmentN_Color`` (``r g b`` in 0..1), ``SegmentN_LabelValue``, ``SegmentN_Layer`` and
``SegmentN_ID``. A 3-D file is one layer. A 4-D file (first axis of kind ``list``, one layer per
entry) holds overlapping segments; reading merges the layers into one label map with the same
rule as DICOM SEG: **later segments win** where they overlap, and the number of overlapping
voxels is returned in ``metadata["overlap_voxels"]``. Label values are kept when every segment
has a distinct value; otherwise segments are renumbered 1..N in file order.
``read_nrrd`` puts the segments in ``metadata["segments"]`` as ``[(value, name, (r, g, b))]``.
``write_nrrd(volume, path, segments=...)`` writes a 3-D, one-layer ``.seg.nrrd`` Slicer opens
as a segmentation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import nrrd
import numpy as np

from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume

NRRD_SUFFIXES = (".nrrd", ".nhdr")
_SPACE_SIGNS = {
    "right-anterior-superior": np.array([1.0, 1.0, 1.0]),
    "ras": np.array([1.0, 1.0, 1.0]),
    "left-posterior-superior": np.array([-1.0, -1.0, 1.0]),
    "lps": np.array([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.array([-1.0, 1.0, 1.0]),
    "las": np.array([-1.0, 1.0, 1.0]),
}
SegmentSpec = tuple[int, str, tuple[int, int, int]]
"""``(label value, name, (r, g, b) 0..255)``."""


def is_nrrd_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIXES)


def is_seg_nrrd_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".seg.nrrd")


def _segments_from_header(header: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    n = 0
    while f"Segment{n}_ID" in header or f"Segment{n}_Name" in header:
        prefix = f"Segment{n}_"
        color = str(header.get(prefix + "Color", "1 0 0")).split()
        try:
            rgb = tuple(int(round(min(max(float(c), 0.0), 1.0) * 255)) for c in color[:3])
        except ValueError:
            rgb = (255, 0, 0)
        out.append(
            {
                "name": str(header.get(prefix + "Name", header.get(prefix + "ID", f"Segment_{n + 1}"))),
                "color": rgb if len(rgb) == 3 else (255, 0, 0),
                "value": int(float(header.get(prefix + "LabelValue", n + 1))),
                "layer": int(float(header.get(prefix + "Layer", 0))),
            }
        )
        n += 1
    return out


def read_nrrd(path: str | Path) -> Volume:
    """Read a NRRD image or label map (``.seg.nrrd`` segments merged into one label map).

    Returns:
        Volume with a voxel -> RAS+ affine. Metadata: ``format="nrrd"``, ``source_path``,
        ``space`` (as written), and for segmentations ``segments`` ``[(value, name, rgb)]`` and
        ``overlap_voxels``.

    Raises:
        ImagingError: unreadable file, no or unsupported space geometry, wrong dimension.
    """
    path = Path(path)
    try:
        data, header = nrrd.read(str(path))
    except Exception as exc:  # pynrrd raises NRRDError, OSError, ValueError, zlib errors...
        raise ImagingError(path, f"not a readable NRRD file ({type(exc).__name__}: {exc})") from exc
    space = str(header.get("space", "")).strip().lower()
    if space not in _SPACE_SIGNS:
        raise ImagingError(
            path,
            f"NRRD space {space or '(none)'!r} is not a patient frame (need right-anterior-superior, "
            "left-posterior-superior or left-anterior-superior)",
        )
    directions = header.get("space directions")
    origin = header.get("space origin")
    if directions is None or origin is None:
        raise ImagingError(
            path, "NRRD without 'space directions' and 'space origin': the voxel geometry is unknown"
        )
    directions = np.asarray(directions, dtype=np.float64)
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    spatial = [i for i in range(data.ndim) if np.all(np.isfinite(directions[i]))]
    if len(spatial) != 3:
        raise ImagingError(path, f"expected 3 spatial axes, found {len(spatial)} (kinds {kinds})")
    signs = _SPACE_SIGNS[space]
    affine = np.eye(4)
    for col, axis in enumerate(spatial):
        affine[:3, col] = directions[axis] * signs
    affine[:3, 3] = np.asarray(origin, dtype=np.float64) * signs
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImagingError(path, "NRRD space directions are singular or not finite")
    segments = _segments_from_header(header)
    meta: dict[str, Any] = {"format": "nrrd", "source_path": str(path), "space": str(header.get("space"))}
    if data.ndim == 4:
        other = next(i for i in range(4) if i not in spatial)
        data = np.moveaxis(data, other, 3)
        if segments:
            data, segments, overlap = _merge_layers(path, data, segments)
            meta["overlap_voxels"] = overlap
    elif data.ndim != 3:
        raise ImagingError(path, f"expected a 3-D or 4-D NRRD, got {data.ndim} dimensions")
    if segments:
        meta["segments"] = [(s["value"], s["name"], tuple(s["color"])) for s in segments]
        meta.setdefault("overlap_voxels", 0)
    return Volume(np.ascontiguousarray(data), affine, meta)


def _merge_layers(
    path: Path, data: np.ndarray, segments: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    """Merge a layered (X, Y, Z, L) Slicer segmentation into one label map; later segments win."""
    values = [s["value"] for s in segments]
    renumber = len(set(values)) != len(values)
    out = np.zeros(data.shape[:3], dtype=np.uint16)
    coverage = np.zeros(data.shape[:3], dtype=np.uint16)
    merged = []
    for i, seg in enumerate(segments):
        layer = seg["layer"]
        if not 0 <= layer < data.shape[3]:
            raise ImagingError(
                path, f"segment {seg['name']!r} is in layer {layer}, the file has {data.shape[3]}"
            )
        mask = data[..., layer] == seg["value"]
        new_value = i + 1 if renumber else seg["value"]
        coverage += mask
        out[mask] = new_value
        merged.append({**seg, "value": new_value, "layer": 0})
    dtype = np.uint8 if out.max(initial=0) <= 255 else np.uint16
    return out.astype(dtype), merged, int((coverage > 1).sum())


def write_nrrd(
    volume: Volume,
    path: str | Path,
    *,
    segments: Sequence[SegmentSpec] | None = None,
    space: Literal["LPS", "RAS"] = "LPS",
) -> Path:
    """Write ``volume`` as NRRD (gzip), atomically.

    Args:
        volume: 3-D image or label map (4-D multi-channel images are written with a trailing
            ``vector`` axis).
        path: ``.nrrd`` (a ``.seg.nrrd`` name is only a convention; ``segments`` makes it one).
        segments: ``(value, name, rgb)`` per label value to describe as a Slicer segment; values
            absent from the label are left out.
        space: world frame to write (``LPS``, Slicer's default, or ``RAS``).

    Raises:
        ImagingError: label values without a segment description, non-integer segment data.
    """
    path = Path(path)
    signs = _SPACE_SIGNS[space.lower()]
    data = np.asarray(volume.array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    directions = (volume.affine[:3, :3] * signs[:, None]).T  # one row per axis
    header: dict[str, Any] = {
        "space": {"LPS": "left-posterior-superior", "RAS": "right-anterior-superior"}[space],
        "space origin": volume.affine[:3, 3] * signs,
        "encoding": "gzip",
    }
    if data.ndim == 4:
        header["space directions"] = np.vstack([directions, np.full((1, 3), np.nan)])
        header["kinds"] = ["domain", "domain", "domain", "vector"]
    else:
        header["space directions"] = directions
        header["kinds"] = ["domain", "domain", "domain"]
    if segments is not None:
        if data.ndim != 3 or not np.issubdtype(data.dtype, np.integer):
            raise ImagingError(
                path, f"a segmentation must be a 3-D integer label map, got {data.dtype} {data.shape}"
            )
        present = sorted(int(v) for v in np.unique(data) if v != 0)
        described = {int(v): (str(n), rgb) for v, n, rgb in segments}
        missing = [v for v in present if v not in described]
        if missing:
            raise ImagingError(path, f"label values {missing} have no segment description")
        header["kinds"] = ["domain", "domain", "domain"]
        for n, value in enumerate(present):
            name, rgb = described[value]
            nz = np.argwhere(data == value)
            lo, hi = nz.min(axis=0), nz.max(axis=0)
            prefix = f"Segment{n}_"
            header[prefix + "ID"] = f"Segment_{value}"
            header[prefix + "Name"] = name
            header[prefix + "NameAutoGenerated"] = "0"
            header[prefix + "Color"] = " ".join(f"{c / 255:.6g}" for c in rgb)
            header[prefix + "ColorAutoGenerated"] = "0"
            header[prefix + "LabelValue"] = str(value)
            header[prefix + "Layer"] = "0"
            header[prefix + "Extent"] = " ".join(f"{int(a)} {int(b)}" for a, b in zip(lo, hi, strict=True))
            header[prefix + "Tags"] = "|"
        header["Segmentation_MasterRepresentation"] = "Binary labelmap"
        header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
        header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nrrd", dir=path.parent)
    os.close(fd)
    try:
        nrrd.write(tmp, np.ascontiguousarray(data), header, compression_level=6)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
