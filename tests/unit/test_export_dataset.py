"""`segloop.store.export_dataset`: MSD and nnU-Net v2 layouts from a tiny made-up store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.store.errors import ValidationError
from segloop.store.export_dataset import export_dataset, safe_case_name
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema

AFFINE = np.array([[0.0, -1.5, 0, 10], [2.0, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def _store(tmp_path: Path, values: tuple[int, ...] = (2, 5)) -> Any:
    store = open_datastore(tmp_path / "D")
    classes = [LabelClass(0, "background", (0, 0, 0))] + [LabelClass(v, f"class{v}") for v in values]
    store.set_schema(LabelSchema(tuple(classes)))
    return store


def _add(store: Any, name: str, seed: int, values: tuple[int, ...], status: str = "final",
         modality: str = "CT") -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(6, 5, 4)).astype(np.float32)
    label = rng.choice(np.array((0, *values)), size=(6, 5, 4)).astype(np.uint16)
    rec = store.add_image(Volume(image, AFFINE), name, "test", modality=modality)
    store.save_label(rec.id, Volume(label, AFFINE), author="t", status=status)
    return rec.id, image, label


def test_nnunet_renumbers_gapped_values_and_keeps_geometry(tmp_path: Path) -> None:
    store = _store(tmp_path, (2, 5, 300))
    _, image, label = _add(store, "a/b c.nii.gz", 1, (2, 5, 300))
    out = tmp_path / "Dataset001_x"
    result = export_dataset(store, out, "nnunet")
    assert result.label_map == {0: 0, 2: 1, 5: 2, 300: 3}
    assert [c["name"] for c in result.cases] == ["a-b-c"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "class2": 1, "class5": 2, "class300": 3}
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["numTraining"] == 1 and meta["file_ending"] == ".nii.gz"
    img = nib.load(out / "imagesTr" / "a-b-c_0000.nii.gz")
    lab = nib.load(out / "labelsTr" / "a-b-c.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), image)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    np.testing.assert_allclose(lab.affine, AFFINE, atol=1e-6)
    lut = {0: 0, 2: 1, 5: 2, 300: 3}
    np.testing.assert_array_equal(np.asarray(lab.dataobj), np.vectorize(lut.get)(label))
    assert np.asarray(lab.dataobj).dtype == np.uint8
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_msd_keeps_values_above_255(tmp_path: Path) -> None:
    store = _store(tmp_path, (2, 300))
    _, _, label = _add(store, "one", 2, (2, 300))
    out = tmp_path / "msd"
    export_dataset(store, out, "msd")
    lab = np.asarray(nib.load(out / "labelsTr" / "one.nii.gz").dataobj)
    np.testing.assert_array_equal(lab, label)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "2": "class2", "300": "class300"}
    assert meta["training"] == [{"image": "./imagesTr/one.nii.gz", "label": "./labelsTr/one.nii.gz"}]


def test_multichannel_nnunet_writes_one_file_per_channel(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    image = np.random.default_rng(3).normal(size=(4, 4, 3, 2)).astype(np.float32)
    rec = store.add_image(Volume(image, AFFINE), "mc", "test", modality="MR")
    store.save_label(rec.id, np.ones((4, 4, 3), np.uint8), author="t", status="final")
    out = tmp_path / "o"
    export_dataset(store, out, "nnunet")
    for c in range(2):
        got = np.asarray(nib.load(out / "imagesTr" / f"mc_{c:04d}.nii.gz").dataobj)
        np.testing.assert_array_equal(got, image[..., c])
    assert len(json.loads((out / "dataset.json").read_text())["channel_names"]) == 2


def test_revision_policies_and_skips(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    img_id, _, final_label = _add(store, "x", 4, (1,), status="final")
    store.save_label(img_id, np.zeros((6, 5, 4), np.uint8), author="t", status="draft",
                     base_revision=1)  # a draft newer than the final
    _add(store, "drafty", 5, (1,), status="draft")
    store.add_image(Volume(np.zeros((6, 5, 4), np.float32), AFFINE), "bare", "test")

    latest = export_dataset(store, tmp_path / "l", "msd")
    assert [(c["name"], c["revision"], c["status"]) for c in latest.cases] == [("x", 2, "draft"), ("drafty", 1, "draft")]
    assert [s["reason"] for s in latest.skipped] == ["no label"]

    final = export_dataset(store, tmp_path / "f", "msd", revision_policy="final")
    assert [(c["name"], c["revision"]) for c in final.cases] == [("x", 1)]
    assert sorted(s["reason"] for s in final.skipped) == ["no final revision", "no label"]
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "f" / "labelsTr" / "x.nii.gz").dataobj), final_label)

    # final_only with the latest revisions: every chosen revision is a draft
    with pytest.raises(ValidationError, match="no labelled image"):
        export_dataset(store, tmp_path / "o", "msd", final_only=True)
    assert not (tmp_path / "o").exists()
    both = export_dataset(store, tmp_path / "b", "msd", final_only=True, revision_policy="final")
    assert [(c["name"], c["revision"], c["status"]) for c in both.cases] == [("x", 1, "final")]


def test_final_only_skips_drafts(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    _add(store, "d", 6, (1,), status="draft")
    _add(store, "f", 8, (1,), status="final")
    result = export_dataset(store, tmp_path / "o", "nnunet", final_only=True)
    assert [c["name"] for c in result.cases] == ["f"]
    assert result.skipped == [{"image_id": "d", "reason": "revision 1 is a draft"}]
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["numTraining"] == 1


def test_non_empty_out_refused_unless_force_and_data_folder_protected(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    _add(store, "a", 7, (1,))
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError, match="not empty"):
        export_dataset(store, out, "msd")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_dataset(store, out, "msd", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    for bad in (tmp_path / "D", tmp_path, tmp_path / "D" / "sub"):
        with pytest.raises(ValidationError, match="data folder"):
            export_dataset(store, bad, "msd", force=True)
    assert (tmp_path / "D").is_dir() and store.list_images()


def test_safe_case_names_are_unique_and_safe() -> None:
    taken: set[str] = set()
    names = [safe_case_name(n, taken) for n in ("../etc/passwd", "A", "a", ".hidden.nii", "", "x y.nrrd")]
    assert names == ["etc-passwd", "A", "a-2", "hidden", "case", "x-y"]
