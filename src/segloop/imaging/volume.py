"""`Volume`: a voxel array that carries its geometry.

Convention (the same as nibabel's): ``array[i, j, k]`` is the voxel at index ``(i, j, k)`` and
``affine @ [i, j, k, 1]`` is its centre in RAS+ world coordinates, in millimetres. Arrays are
3-D ``(X, Y, Z)`` or 4-D ``(X, Y, Z, C)`` for multi-channel images. Images are kept in the
voxel order they were stored in; `Volume.canonical` reorders to the closest RAS+ frame when a
consumer needs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np

from segloop.imaging.errors import GeometryError


@dataclass
class Volume:
    """A 3-D (optionally multi-channel) image or label map with its geometry.

    Attributes:
        array: voxel data, shape ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        affine: ``(4, 4)`` voxel index -> RAS+ world (mm) transform.
        metadata: free-form descriptive data (``modality``, ``series_uid``, ``patient_id``,
            ``source``...). Never used for geometry.
    """

    array: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim not in (3, 4):
            raise GeometryError(f"volume must be 3-D or 4-D (X, Y, Z[, C]), got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)``."""
        s = self.array.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (norms of the affine's columns)."""
        sp = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(sp[0]), float(sp[1]), float(sp[2]))

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Axis codes, e.g. ``('R', 'A', 'S')``."""
        codes = nib.orientations.aff2axcodes(self.affine)
        return (str(codes[0]), str(codes[1]), str(codes[2]))

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """A volume on the same grid holding ``array`` (spatial shape must match)."""
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"array shape {tuple(array.shape)} does not match volume shape {self.shape}")
        return Volume(array, self.affine.copy(), {**self.metadata, **metadata})

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when both volumes have the same spatial shape and (within ``atol`` mm) affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def check_same_grid(self, other: Volume, what: str = "label", of: str = "image", atol: float = 1e-3) -> None:
        """Raise `GeometryError` naming both geometries when ``other`` is not on this grid."""
        if self.shape != other.shape:
            raise GeometryError(f"{what} shape {other.shape} does not match {of} shape {self.shape}")
        if not np.allclose(self.affine, other.affine, atol=atol):
            raise GeometryError(
                f"{what} affine does not match {of} affine "
                f"({what}: {np.round(other.affine, 4).tolist()}, {of}: {np.round(self.affine, 4).tolist()})"
            )

    def canonical(self) -> Volume:
        """This volume reordered (flips/permutations only) to the closest RAS+ voxel order."""
        img = nib.Nifti1Image(self.array, self.affine)
        can = nib.as_closest_canonical(img)
        return Volume(np.asarray(can.dataobj), can.affine, dict(self.metadata))

    def copy(self) -> Volume:
        return replace(self, array=self.array.copy(), affine=self.affine.copy(), metadata=dict(self.metadata))


def middle_slice(volume: Volume) -> Volume:
    """The slice ``k = Z // 2`` of ``volume`` as a one-slice volume ``(X, Y, 1[, C])`` at its
    place in the world (the affine moved by ``k`` slices)."""
    k = volume.shape[2] // 2
    affine = np.array(volume.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[:, :, k:k + 1]), affine, dict(volume.metadata))
