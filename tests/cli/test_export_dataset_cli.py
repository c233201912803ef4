"""`segloop export-dataset` as a user runs it: tiny made-up volumes imported, exported as MSD and
nnU-Net v2, read back with nibabel, and the MSD export imported again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segloop.store.local import open_datastore
from tests.cli.conftest import Run, snapshot

Segloop = Callable[..., Run]

AFFINES = [
    np.array([[1.5, 0, 0, -10], [0, 2.0, 0, 4], [0, 0, 3.0, 1], [0, 0, 0, 1]]),
    np.array([[0, -1.0, 0, 7], [1.0, 0, 0, -3], [0, 0, 2.5, 0], [0, 0, 0, 1]]),
    np.array([[-0.8, 0, 0, 5], [0, 0.8, 0, 6], [0, 0, 1.2, -2], [0, 0, 0, 1]]),
]
# schema values with a gap (0, 1, 3): nnU-Net needs 0, 1, 2
LABELS = {"0": "background", "1": "liver", "3": "tumour"}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """An MSD-layout folder with three tiny cases, values 0/1/3."""
    root = tmp_path / "src"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for n, affine in enumerate(AFFINES):
        image = rng.integers(-100, 400, size=(7, 6, 5)).astype(np.int16)
        label = rng.choice(np.array([0, 1, 3], np.uint8), size=(7, 6, 5))
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{n}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{n}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "modality": {"0": "CT"}, "labels": LABELS}))
    return root


@pytest.fixture
def data(segloop: Segloop, source: Path, tmp_path: Path) -> Path:
    d = tmp_path / "D"
    res = segloop("import", source / "imagesTr", "--labels", source / "labelsTr", "--data", d)
    assert res.code == 0, res.err
    return d


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_msd_export_matches_the_store_and_round_trips(segloop: Segloop, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "msd"
    res = segloop("export-dataset", "--data", data, "--format", "msd", "-o", out)
    assert res.code == 0, res.err
    assert "wrote 3 case(s)" in res.out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["labels"] == LABELS and meta["modality"] == {"0": "CT"}
    assert sorted(t["image"] for t in meta["training"]) == [f"./imagesTr/case{n}.nii.gz" for n in range(3)]
    store = open_datastore(data)
    for n in range(3):
        image, label = store.load_image(f"case{n}"), store.load_label(f"case{n}")
        got_img, got_lab = nib.load(out / "imagesTr" / f"case{n}.nii.gz"), nib.load(out / "labelsTr" / f"case{n}.nii.gz")
        np.testing.assert_array_equal(np.asarray(got_img.dataobj), image.array)
        np.testing.assert_array_equal(np.asarray(got_lab.dataobj), label.array)
        np.testing.assert_allclose(got_img.affine, image.affine, atol=1e-5)
        np.testing.assert_allclose(got_lab.affine, image.affine, atol=1e-5)
        np.testing.assert_allclose(got_img.affine, AFFINES[n], atol=1e-5)

    again = tmp_path / "D2"
    res = segloop("import", out / "imagesTr", "--labels", out / "labelsTr", "--data", again)
    assert res.code == 0, res.err
    store2 = open_datastore(again)
    assert {c.value: c.name for c in store2.get_schema().classes} == {int(k): v for k, v in LABELS.items()}
    for n in range(3):
        np.testing.assert_array_equal(store2.load_image(f"case{n}").array, store.load_image(f"case{n}").array)
        np.testing.assert_array_equal(store2.load_label(f"case{n}").array, store.load_label(f"case{n}").array)
        np.testing.assert_allclose(store2.load_image(f"case{n}").affine, AFFINES[n], atol=1e-5)


def test_nnunet_export_layout_and_label_renumbering(segloop: Segloop, data: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "Dataset001_tiny"
    res = segloop("export-dataset", "--data", data, "--format", "nnunet", "-o", out)
    assert res.code == 0, res.err
    assert "labels renumbered for nnU-Net: 3->2" in res.out
    meta = json.loads((out / "dataset.json").read_text())
    # nnU-Net v2's required keys (verify_dataset_integrity): labels, channel_names, numTraining, file_ending
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"case{n}_0000.nii.gz" for n in range(3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"case{n}.nii.gz" for n in range(3)]
    for n in range(3):
        src = _voxels(source / "labelsTr" / f"case{n}.nii.gz")
        lab = nib.load(out / "labelsTr" / f"case{n}.nii.gz")
        got = np.asarray(lab.dataobj)
        np.testing.assert_array_equal(got, np.where(src == 3, 2, src))
        assert set(np.unique(got).tolist()) <= {0, 1, 2}
        img = nib.load(out / "imagesTr" / f"case{n}_0000.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), _voxels(source / "imagesTr" / f"case{n}.nii.gz"))
        np.testing.assert_allclose(img.affine, AFFINES[n], atol=1e-5)
        np.testing.assert_allclose(lab.affine, AFFINES[n], atol=1e-5)

    as_json = segloop("export-dataset", "--data", data, "--format", "nnunet", "-o", tmp_path / "j", "--json")
    assert as_json.code == 0, as_json.err
    assert as_json.json()["label_map"] == {"0": 0, "1": 1, "3": 2}


def test_revision_policy_and_final_only(segloop: Segloop, data: Path, tmp_path: Path) -> None:
    store = open_datastore(data)
    store.save_label("case1", np.zeros((7, 6, 5), np.uint8), author="bob", status="draft", base_revision=1)
    final_label = store.load_label("case1", 1).array

    latest = segloop("export-dataset", "--data", data, "--format", "msd", "-o", tmp_path / "l", "--json")
    assert latest.code == 0, latest.err
    assert {c["name"]: c["revision"] for c in latest.json()["cases"]} == {"case0": 1, "case1": 2, "case2": 1}
    assert not _voxels(tmp_path / "l" / "labelsTr" / "case1.nii.gz").any()  # the newer draft

    final = segloop("export-dataset", "--data", data, "--format", "msd", "-o", tmp_path / "f",
                    "--revision-policy", "final")
    assert final.code == 0, final.err
    assert "wrote 3 case(s) (0 from draft revisions)" in final.out
    np.testing.assert_array_equal(_voxels(tmp_path / "f" / "labelsTr" / "case1.nii.gz"), final_label)

    only = segloop("export-dataset", "--data", data, "--format", "nnunet", "-o", tmp_path / "o", "--final-only")
    assert only.code == 0, only.err
    assert "wrote 2 case(s)" in only.out and "skipped 1 image(s): 1 draft" in only.out
    assert "case1: revision 2 is a draft" in only.err
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["numTraining"] == 2
    assert not (tmp_path / "o" / "labelsTr" / "case1.nii.gz").exists()


def test_non_empty_out_refused_without_force(segloop: Segloop, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    (out / "imagesTr").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "imagesTr" / "old.nii.gz").write_bytes(b"old")
    before = snapshot(out)
    res = segloop("export-dataset", "--data", data, "--format", "msd", "-o", out)
    assert res.code == 2
    assert res.err.strip().count("\n") == 0 and "not empty" in res.err and "Traceback" not in res.err
    assert snapshot(out) == before and (out / "notes.txt").read_text() == "keep me"

    forced = segloop("export-dataset", "--data", data, "--format", "msd", "-o", out, "--force")
    assert forced.code == 0, forced.err
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not (out / "imagesTr" / "old.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    into_data = segloop("export-dataset", "--data", data, "--format", "msd", "-o", data, "--force")
    assert into_data.code == 2 and "data folder" in into_data.err
    assert open_datastore(data).count_images() == 3


def test_bad_arguments_are_one_line_errors(segloop: Segloop, tmp_path: Path) -> None:
    res = segloop("export-dataset", "--data", tmp_path / "nothing", "--format", "msd", "-o", tmp_path / "o")
    assert res.code == 2 and "no segloop data folder" in res.err and "Traceback" not in res.err
    res = segloop("export-dataset", "--data", tmp_path, "--format", "coco", "-o", tmp_path / "o")
    assert res.code == 2 and "invalid choice" in res.err
