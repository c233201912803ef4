"""NRRD and Slicer .seg.nrrd reading/writing (segloop.imaging.nrrd)."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from segloop.imaging import ImagingError, Volume, read_dicom_series, read_nifti
from segloop.imaging.nrrd import read_nrrd, write_nrrd

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def hippo_label(shared_data: Path) -> Volume:
    return read_nifti(shared_data / "Task04_Hippocampus" / "labelsTr" / "hippocampus_001.nii.gz")


@pytest.fixture(scope="module")
def oblique_mr(shared_data: Path) -> Volume:
    return read_dicom_series(shared_data / "dicom" / "mr_brain_tcia_pgbm" / "Study3" / "11-T1post-18670")


@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_nifti_to_nrrd_round_trip_keeps_affine_and_voxels(
    tmp_path: Path, hippo_label: Volume, space: str
) -> None:
    path = write_nrrd(hippo_label, tmp_path / "label.nrrd", space=space)  # type: ignore[arg-type]
    back = read_nrrd(path)
    assert np.allclose(back.affine, hippo_label.affine, atol=1e-9)
    assert np.array_equal(back.array, hippo_label.array)
    assert back.array.dtype == hippo_label.array.dtype


def test_oblique_affine_agrees_with_simpleitk(tmp_path: Path, oblique_mr: Volume) -> None:
    """An independent reader (ITK, LPS) places the written voxels where our affine says."""
    path = write_nrrd(oblique_mr, tmp_path / "mr.nrrd")
    img = sitk.ReadImage(str(path))
    direction = np.array(img.GetDirection()).reshape(3, 3)
    lps = LPS @ oblique_mr.affine
    assert np.allclose(np.array(img.GetOrigin()), lps[:3, 3], atol=1e-6)
    assert np.allclose(direction * np.array(img.GetSpacing()), lps[:3, :3], atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), oblique_mr.array)
    back = read_nrrd(path)
    assert np.allclose(back.affine, oblique_mr.affine, atol=1e-9)


def test_reads_ras_and_las_spaces(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    dirs = np.array([[0.0, 2.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, 3.0]])
    for space, signs in (("right-anterior-superior", [1, 1, 1]), ("left-anterior-superior", [-1, 1, 1])):
        path = tmp_path / f"{space}.nrrd"
        nrrd.write(
            str(path),
            data,
            {"space": space, "space directions": dirs, "space origin": np.array([5.0, 6.0, 7.0])},
        )
        vol = read_nrrd(path)
        expected = np.eye(4)
        expected[:3, :3] = (dirs * signs).T
        expected[:3, 3] = np.array([5.0, 6.0, 7.0]) * signs
        assert np.allclose(vol.affine, expected)
        assert np.array_equal(vol.array, data)


def test_seg_nrrd_round_trip_with_segments(tmp_path: Path, hippo_label: Volume) -> None:
    segments = [(1, "anterior", (255, 0, 0)), (2, "posterior", (0, 128, 255)), (3, "unused", (1, 2, 3))]
    path = write_nrrd(hippo_label, tmp_path / "label.seg.nrrd", segments=segments)
    _, header = nrrd.read(str(path))
    assert header["Segment0_Name"] == "anterior" and header["Segment1_LabelValue"] == "2"
    assert "Segment2_Name" not in header  # only values present
    back = read_nrrd(path)
    assert back.metadata["segments"] == [(1, "anterior", (255, 0, 0)), (2, "posterior", (0, 128, 255))]
    assert back.metadata["overlap_voxels"] == 0
    assert np.array_equal(back.array, hippo_label.array)
    with pytest.raises(ImagingError, match=r"label values \[2\] have no segment"):
        write_nrrd(hippo_label, tmp_path / "x.seg.nrrd", segments=segments[:1])


def test_layered_slicer_segmentation_later_segment_wins(tmp_path: Path) -> None:
    """A 4-D Slicer .seg.nrrd (overlapping segments in two layers) merges into one label map."""
    layers = np.zeros((2, 4, 5, 6), dtype=np.uint8)  # (layer, X, Y, Z) as Slicer writes it
    layers[0, 0:2, :, :] = 1  # segment A, value 1, layer 0
    layers[0, 3, :, :] = 2  # segment B, value 2, layer 0
    layers[1, 1:4, 0, :] = 1  # segment C, value 1, layer 1 (overlaps A and B)
    dirs = np.vstack([np.full((1, 3), np.nan), np.eye(3)])
    header = {
        "space": "left-posterior-superior",
        "space directions": dirs,
        "space origin": np.zeros(3),
        "kinds": ["list", "domain", "domain", "domain"],
    }
    for n, (name, value, layer) in enumerate((("A", 1, 0), ("B", 2, 0), ("C", 1, 1))):
        header[f"Segment{n}_ID"] = name
        header[f"Segment{n}_Name"] = name
        header[f"Segment{n}_LabelValue"] = str(value)
        header[f"Segment{n}_Layer"] = str(layer)
        header[f"Segment{n}_Color"] = "0.5 0.5 0.5"
    path = tmp_path / "layered.seg.nrrd"
    nrrd.write(str(path), layers, header)
    vol = read_nrrd(path)
    assert vol.shape == (4, 5, 6)
    # values clash (A and C are both 1), so segments are renumbered 1..3 in file order
    assert [s[:2] for s in vol.metadata["segments"]] == [(1, "A"), (2, "B"), (3, "C")]
    expected = np.zeros((4, 5, 6), dtype=np.uint8)
    expected[0:2] = 1
    expected[3] = 2
    expected[1:4, 0] = 3
    assert np.array_equal(vol.array, expected)
    overlap = ((layers[0] > 0) & (layers[1] > 0)).sum()
    assert vol.metadata["overlap_voxels"] == overlap == 12  # x=1 (A) and x=3 (B), all z
    assert np.allclose(vol.affine, LPS)


def test_files_without_patient_space_are_refused(tmp_path: Path) -> None:
    data = np.zeros((2, 2, 2), dtype=np.uint8)
    nrrd.write(str(tmp_path / "plain.nrrd"), data, {"spacings": [1.0, 1.0, 1.0]})
    with pytest.raises(ImagingError, match="not a patient frame"):
        read_nrrd(tmp_path / "plain.nrrd")
    nrrd.write(
        str(tmp_path / "scanner.nrrd"),
        data,
        {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": np.zeros(3)},
    )
    with pytest.raises(ImagingError, match="scanner-xyz"):
        read_nrrd(tmp_path / "scanner.nrrd")
    (tmp_path / "junk.nrrd").write_bytes(b"not nrrd at all")
    with pytest.raises(ImagingError, match="not a readable NRRD"):
        read_nrrd(tmp_path / "junk.nrrd")


def test_discover_reads_nrrd_images_and_skips_slicer_segmentations(
    tmp_path: Path, hippo_label: Volume
) -> None:
    from segloop.imaging import discover

    folder = tmp_path / "in"
    write_nrrd(hippo_label.with_array(hippo_label.array.astype(np.float32)), folder / "case 1.nrrd")
    write_nrrd(hippo_label, folder / "case1.seg.nrrd", segments=[(1, "a", (1, 2, 3)), (2, "b", (4, 5, 6))])
    found = discover([folder], tmp_path / "work")
    assert [(s.name, s.kind) for s in found.sources] == [("case_1", "nrrd")]
    assert [p.name for p, _ in found.skipped] == ["case1.seg.nrrd"]
    assert found.errors == []
    vol = found.sources[0].read()
    assert np.allclose(vol.affine, hippo_label.affine) and np.array_equal(vol.array, hippo_label.array)
