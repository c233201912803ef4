"""Patient geometry of a DICOM slice stack: orientation, slice ordering, spacing, the affine.

A `_Plane` is one image's geometry from its header. `_sorted_stack` sorts a group of planes
along the slice normal, refuses duplicate positions, uneven spacing (`GAP_TOLERANCE`) and
positions off one line, and gives the voxel -> RAS+ affine (see "Geometry" and "Gap policy"
in `segloop.imaging.dicom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.dicom_header import DicomHeader
from segloop.imaging.errors import ImagingError

GAP_TOLERANCE = 0.10
"""Largest allowed deviation of a slice step from the series' spacing, as a fraction of it."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class _Plane:
    """Geometry of one single-frame image file (from its header)."""

    header: DicomHeader
    iop: np.ndarray  # (6,)
    spacing: np.ndarray  # (2,) PixelSpacing (row spacing, column spacing)
    position: np.ndarray  # (3,)
    rows: int
    columns: int


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _check_iop(path: Path, iop: np.ndarray) -> None:
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-2 or abs(np.linalg.norm(c) - 1) > 1e-2 or abs(np.dot(r, c)) > 1e-2:
        raise ImagingError(path, f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")


def slice_normal(iop: np.ndarray) -> np.ndarray:
    """The unit normal of the slice plane of an ImageOrientationPatient ``(6,)`` (row x column)."""
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(r, c)
    return np.asarray(n / np.linalg.norm(n))


def _positions(group: Sequence[_Plane]) -> np.ndarray:
    n = slice_normal(group[0].iop)
    return np.array([float(np.dot(n, p.position)) for p in group])


def _has_duplicates(group: Sequence[_Plane], tol: float = 1e-3) -> bool:
    d = np.sort(_positions(group))
    return bool(len(d) > 1 and np.min(np.diff(d)) < tol)


def _sorted_stack(group: list[_Plane], folder: Path, label: str) -> tuple[list[_Plane], np.ndarray]:
    """``group`` (one series' planes) sorted along the slice normal, and its voxel -> RAS+ affine
    for the array ``(columns, rows, slices)``; orientation and pixel spacing are those of the
    first plane as given.

    Raises:
        ImagingError: naming ``folder`` and, in the message, ``label``: two planes at the same
            position, slice spacing not uniform, or positions not on one line.
    """
    first = group[0]
    ds = first.header.dataset
    n = slice_normal(first.iop)
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
    return group, _LPS_TO_RAS @ lps
