"""segloop.imaging.nifti: round trips and refusals."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segloop.imaging import ImagingError, Volume, nifti_bytes, read_nifti, write_nifti


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(15)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [-100.5, 20.25, 33.0]
    return affine


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.uint16])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_affine_shape_dtype_and_values(tmp_path: Path, dtype: type, suffix: str) -> None:
    rng = np.random.default_rng(1)
    array = (rng.random((5, 6, 7)) * 200).astype(dtype)
    volume = Volume(array, oblique_affine(), {"modality": "MR"})
    path = write_nifti(volume, tmp_path / f"v{suffix}")
    back = read_nifti(path)
    assert back.shape == (5, 6, 7)
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert back.metadata["format"] == "nifti"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_write_with_dtype_and_bool(tmp_path: Path) -> None:
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 2, 3] = True
    back = read_nifti(write_nifti(Volume(mask, np.eye(4)), tmp_path / "m.nii.gz"))
    assert back.array.dtype == np.uint8 and back.array[1, 2, 3] == 1 and back.array.sum() == 1
    as_int = read_nifti(
        write_nifti(Volume(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp_path / "i.nii", dtype=np.int16)
    )
    assert as_int.array.dtype == np.int16


def test_multichannel_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    back = read_nifti(write_nifti(Volume(array, np.eye(4)), tmp_path / "c.nii.gz"))
    assert back.shape == (2, 3, 4) and back.channels == 2
    np.testing.assert_array_equal(back.array, array)


def test_nifti_bytes_decode_to_the_same_volume() -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    volume = Volume(array, oblique_affine())
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_bytes(volume)))
    np.testing.assert_array_equal(np.asarray(img.dataobj), array)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-5)


def test_real_case(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz")
    assert volume.orientation == ("R", "A", "S")
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert min(volume.shape) >= 24 and max(volume.shape) <= 59


def test_truncated_nii_gz_is_refused(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImagingError) as info:
        read_nifti(cut)
    assert info.value.path == str(cut)
    assert str(info.value).startswith(f"{cut}: not a readable NIfTI file")


def test_not_nifti_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii"
    bad.write_text("hello")
    with pytest.raises(ImagingError, match=r"bad\.nii: not a readable NIfTI file"):
        read_nifti(bad)
