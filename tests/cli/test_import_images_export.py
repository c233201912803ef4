"""`segloop import / images / export` as a user runs them (real subprocesses, real data)."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli.conftest import HIPPO, SHARED_DATA, Run, snapshot

Segloop = Callable[..., Run]


def test_import_whole_hippocampus_with_labels_then_list_json(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    res = segloop("import", HIPPO / "imagesTr", "--labels", HIPPO / "labelsTr", "--data", data)
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert len(lines) == 260
    first = next(line for line in lines if line.startswith("hippocampus_001 "))
    shape = "×".join(str(s) for s in nib.load(HIPPO / "imagesTr" / "hippocampus_001.nii.gz").shape)
    assert first.split()[1:4] == [shape, "1×1×1", "mm"]  # one line per image: id, shape, spacing, modality
    assert first.split()[4] == "MRI"

    listing = segloop("images", "--data", data, "--json")
    assert listing.code == 0, listing.err
    images = listing.json()
    assert len(images) == 260
    for img in images:
        for key in ("id", "name", "shape", "spacing", "modality", "label_state", "latest_revision", "author"):
            assert key in img
        assert img["label_state"] == "final"
        assert img["latest_revision"] == 1
    by_id = {img["id"]: img for img in images}
    ref = nib.load(HIPPO / "imagesTr" / "hippocampus_001.nii.gz")
    assert by_id["hippocampus_001"]["shape"] == list(ref.shape)
    assert by_id["hippocampus_001"]["modality"] == "MRI"


def test_schema_comes_from_dataset_json_and_export_keeps_geometry(
    segloop: Segloop, hippo_subset: Path, tmp_path: Path
) -> None:
    data = tmp_path / "D"
    res = segloop("import", hippo_subset / "imagesTr", "--labels", hippo_subset / "labelsTr", "--data", data)
    assert res.code == 0, res.err
    assert "Anterior" in res.err and "Posterior" in res.err  # the schema note

    out = tmp_path / "out"
    exp = segloop("export", "hippocampus_003", "--data", data, "--format", "nifti", "-o", out)
    assert exp.code == 0, exp.err
    image = nib.load(out / "hippocampus_003.nii.gz")
    label = nib.load(out / "hippocampus_003_label-r1.nii.gz")
    src_img = nib.load(HIPPO / "imagesTr" / "hippocampus_003.nii.gz")
    src_lab = nib.load(HIPPO / "labelsTr" / "hippocampus_003.nii.gz")
    assert label.shape == image.shape == src_img.shape
    np.testing.assert_allclose(label.affine, src_img.affine, atol=1e-5)
    np.testing.assert_allclose(image.affine, src_img.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(src_lab.dataobj).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(src_img.dataobj))

    single = segloop("export", "hippocampus_003", "--data", data, "-o", tmp_path / "l.nii.gz", "--what", "label")
    assert single.code == 0, single.err
    assert nib.load(tmp_path / "l.nii.gz").shape == src_img.shape


def test_draft_import_and_label_state(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "D"
    res = segloop("import", hippo_subset / "imagesTr", "--labels", hippo_subset / "labelsTr", "--data", data,
                  "--draft", "--author", "alice")
    assert res.code == 0, res.err
    images = segloop("images", "--data", data, "--json").json()
    assert {i["label_state"] for i in images} == {"draft"}
    assert {i["author"] for i in images} == {"alice"}
    finals = segloop("images", "--data", data, "--json", "--state", "final").json()
    assert finals == []


def _assert_refused(res: Run, data: Path, before: dict[str, int], *needles: str) -> None:
    assert res.code != 0
    assert "Traceback" not in res.err
    for needle in needles:
        assert needle in res.err, res.err
    assert snapshot(data) == before


@pytest.fixture
def seeded(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A data folder holding one image, and a snapshot of it."""
    data = tmp_path / "D"
    res = segloop("import", hippo_subset / "imagesTr" / "hippocampus_001.nii.gz", "--data", data)
    assert res.code == 0, res.err
    return data, snapshot(data)


def test_truncated_nifti_refused_and_nothing_changes(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    src = (HIPPO / "imagesTr" / "hippocampus_004.nii.gz").read_bytes()
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(src[: len(src) // 2])
    good = tmp_path / "in" / "good.nii.gz"
    good.write_bytes(src)
    res = segloop("import", tmp_path / "in", "--data", data)
    _assert_refused(res, data, before, "broken.nii.gz")
    assert "good" not in res.out


def test_text_file_named_dcm_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    bad = tmp_path / "notes.dcm"
    bad.write_text("this is not DICOM\n" * 20)
    res = segloop("import", bad, "--data", data)
    _assert_refused(res, data, before, "notes.dcm")


def test_label_with_wrong_shape_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    shutil.copy(HIPPO / "imagesTr" / "hippocampus_004.nii.gz", tmp_path / "img" / "case.nii.gz")
    other = nib.load(HIPPO / "labelsTr" / "hippocampus_006.nii.gz")
    nib.save(other, tmp_path / "lab" / "case.nii.gz")
    res = segloop("import", tmp_path / "img", "--labels", tmp_path / "lab", "--data", data)
    _assert_refused(res, data, before, "case.nii.gz", "shape")


def test_label_with_unknown_class_value_refused(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "D"
    lab = nib.load(hippo_subset / "labelsTr" / "hippocampus_001.nii.gz")
    arr = np.asarray(lab.dataobj).astype(np.uint8)
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, lab.affine), hippo_subset / "labelsTr" / "hippocampus_001.nii.gz")
    res = segloop("import", hippo_subset / "imagesTr", "--labels", hippo_subset / "labelsTr", "--data", data)
    assert res.code != 0
    assert "7" in res.err and "schema" in res.err
    assert not any(k.startswith(("images/", "labels/")) for k in snapshot(data))


def test_zip_with_parent_path_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.nii.gz", (HIPPO / "imagesTr" / "hippocampus_004.nii.gz").read_bytes())
    res = segloop("import", archive, "--data", data)
    _assert_refused(res, data, before, "evil.zip", "..")
    assert not (tmp_path / "escaped.nii.gz").exists()


def test_zip_of_nifti_imports(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    archive = tmp_path / "cases.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(HIPPO / "imagesTr" / "hippocampus_004.nii.gz", "cases/hippocampus_004.nii.gz")
        zf.write(HIPPO / "imagesTr" / "hippocampus_006.nii.gz", "cases/hippocampus_006.nii.gz")
    res = segloop("import", archive, "--data", data)
    assert res.code == 0, res.err
    ids = {i["id"] for i in segloop("images", "--data", data, "--json").json()}
    assert ids == {"hippocampus_004", "hippocampus_006"}


def test_empty_folder_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    empty = tmp_path / "empty"
    empty.mkdir()
    res = segloop("import", empty, "--data", data)
    _assert_refused(res, data, before, "empty")


def test_dicom_without_pixel_data_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    import pydicom

    data, before = seeded
    src = sorted((SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "ct-3slice").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    del ds.PixelData
    bad = tmp_path / "nopixels.dcm"
    ds.save_as(bad)
    res = segloop("import", bad, "--data", data)
    _assert_refused(res, data, before, "nopixels.dcm")


def test_series_with_missing_slice_refused(segloop: Segloop, seeded: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    data, before = seeded
    src = SHARED_DATA / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume"
    series = tmp_path / "series"
    shutil.copytree(src, series)
    files = sorted(p for p in series.rglob("*") if p.is_file())
    files[len(files) // 2].unlink()
    res = segloop("import", series, "--data", data)
    _assert_refused(res, data, before, "series")


def test_missing_data_folder_is_a_clear_error(segloop: Segloop, tmp_path: Path) -> None:
    res = segloop("images", "--data", tmp_path / "nowhere")
    assert res.code != 0
    assert "no segloop data folder" in res.err
    assert "Traceback" not in res.err


def test_every_shared_dicom_folder_imports_or_is_refused_precisely(segloop: Segloop, tmp_path: Path) -> None:
    dicom = SHARED_DATA / "dicom"
    expectations = {
        "mr_brain_tcia_pgbm": 3,  # GE and Siemens oblique T1post + the HippoCrop series
        "ct_totalsegmentator_example": 1,  # blank UIDs, JPEG 2000
        "ct_seg_dcmqi": 1,  # 3-slice CT; its two SEGs become label revisions 1 and 2 of it
        "transfer_syntaxes_dcm_qa_ts": 9,  # one mosaic volume per file
    }
    for folder, n_images in expectations.items():
        data = tmp_path / folder
        res = segloop("import", dicom / folder, "--data", data, "--json")
        assert res.code == 0, res.err
        imported = res.json()
        assert len(imported) == n_images, (folder, [i["id"] for i in imported])
        for img in imported:
            assert img["modality"] in ("MR", "CT")
            assert len(img["shape"]) == 3
    seg_run = segloop("import", dicom / "ct_seg_dcmqi", "--data", tmp_path / "seg2")
    assert seg_run.code == 0, seg_run.err
    assert "liver.dcm: label r1" in seg_run.err and "partial_overlaps.dcm: label r2" in seg_run.err
    assert "skipped" not in seg_run.err


def test_gzip_label_file_is_read_in_full(segloop: Segloop, tmp_path: Path) -> None:
    """A label whose gzip stream is cut short is refused even though its header reads fine."""
    data = tmp_path / "D"
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    shutil.copy(HIPPO / "imagesTr" / "hippocampus_004.nii.gz", tmp_path / "img" / "c.nii.gz")
    raw = gzip.decompress((HIPPO / "labelsTr" / "hippocampus_004.nii.gz").read_bytes())
    (tmp_path / "lab" / "c.nii.gz").write_bytes(gzip.compress(raw)[:-200])
    res = segloop("import", tmp_path / "img", "--labels", tmp_path / "lab", "--data", data)
    assert res.code != 0
    assert "c.nii.gz" in res.err
    assert not any(k.startswith(("images/", "labels/")) for k in snapshot(data))


def test_demo_imports_once_and_reports_the_folder(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "demo"
    first = segloop("demo", "--dataset", hippo_subset, "--data", data, "--no-train", "--no-serve")
    assert first.code == 0, first.err
    # one of the four labels is held back (--unlabelled 0.25 by default): the pool "Next image" chooses from
    assert "images:      4 (final labels: 3, drafts: 0, unlabelled: 1)" in first.out
    assert "held back the labels of 1 image(s)" in first.err
    assert "classes:     0=background, 1=Anterior, 2=Posterior" in first.out
    before = snapshot(data)
    again = segloop("demo", "--dataset", hippo_subset, "--data", data, "--no-train", "--no-serve")
    assert again.code == 0, again.err
    assert "not importing again" in again.err
    assert snapshot(data) == before


def test_demo_unlabelled_share_is_chosen_the_same_way_each_time(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        res = segloop("demo", "--dataset", hippo_subset, "--data", tmp_path / name, "--no-train", "--no-serve")
        assert res.code == 0, res.err
        runs.append({img["id"] for img in segloop("images", "--data", tmp_path / name, "--state", "none", "--json").json()})
    assert len(runs[0]) == 1 and runs[0] == runs[1]
    every = segloop("demo", "--dataset", hippo_subset, "--data", tmp_path / "all", "--no-train", "--no-serve",
                    "--unlabelled", "0")
    assert "final labels: 4, drafts: 0, unlabelled: 0" in every.out
    bad = segloop("demo", "--dataset", hippo_subset, "--data", tmp_path / "bad", "--no-serve", "--unlabelled", "1.5")
    assert bad.code == 2 and "not in [0, 1)" in bad.err and not (tmp_path / "bad").exists()


def test_demo_without_dataset_is_a_clear_error(segloop: Segloop, tmp_path: Path) -> None:
    res = segloop("demo", "--dataset", tmp_path / "missing", "--data", tmp_path / "d", "--no-serve")
    assert res.code == 2
    assert "sample dataset not found" in res.err


def test_import_does_not_keep_the_absolute_source_path(segloop: Segloop, hippo_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", hippo_subset / "imagesTr", "--data", data).code == 0
    images = segloop("images", "--data", data, "--json").json()
    assert images and all(str(tmp_path) not in str(img["metadata"]) for img in images)
    assert {img["metadata"]["source_file"] for img in images} == {p.name for p in (hippo_subset / "imagesTr").iterdir()}


def test_train_refuses_a_bad_model_name_before_training(segloop: Segloop, seeded: tuple[Path, dict[str, int]]) -> None:
    data, before = seeded
    res = segloop("train", "../bad name", "--data", data, "--max-minutes", "5")
    _assert_refused(res, data, before, "model name")
