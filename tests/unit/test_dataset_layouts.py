"""Reading labelled datasets in nnU-Net's raw layout beside the MSD layout (`segloop.store.msd`):
the dataset opener, the importer and the emulation's plan see one image per case, its channels
joined from one file each, and bad layouts are refused with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segloop.imaging.errors import ImagingError
from segloop.imaging.nifti import read_nifti_channels
from segloop.imaging.volume import Volume
from segloop.loop.emulation_setup import EmulationConfig
from segloop.loop.emulation_setup import plan as emulation_plan
from segloop.ml.fingerprint import fingerprint_msd
from segloop.store.errors import ValidationError
from segloop.store.export_dataset import export_dataset
from segloop.store.ingest import IngestError, import_paths
from segloop.store.local import open_datastore
from segloop.store.msd import open_msd, read_dataset_meta
from segloop.store.records import LabelClass, LabelSchema

AFFINE = np.array([[0.0, -1.5, 0, 10], [2.0, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def _two_channel_store(tmp_path: Path, cases: int) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A data folder of ``cases`` two-channel images with labels of values 0, 3, 7 (gapped)."""
    store = open_datastore(tmp_path / "src")
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(3, "gland"), LabelClass(7, "lesion"))))
    made = {}
    rng = np.random.default_rng(0)
    for i in range(cases):
        image = rng.normal(size=(8, 7, 6, 2)).astype(np.float32)
        label = np.zeros((8, 7, 6), np.uint8)
        label[2:6, 2:5, 1:5] = 3
        label[3:5, 3:4, 2:4] = 7
        rec = store.add_image(Volume(image, AFFINE), f"case{i}", "test", modality="MR")
        store.save_label(rec.id, label, author="t", status="final")
        made[rec.id] = (image, label)
    return store, made


def test_nnunet_export_reads_back_as_one_image_per_case(tmp_path: Path) -> None:
    store, made = _two_channel_store(tmp_path, 3)
    out = tmp_path / "Dataset002_Two"
    export_dataset(store, out, "nnunet")
    ds = open_msd(out)
    assert ds.layout == "nnunet"
    assert ds.modality == json.loads((out / "dataset.json").read_text())["channel_names"]["0"]
    assert [(c.value, c.name) for c in ds.schema.classes] == [(0, "background"), (1, "gland"), (2, "lesion")]
    assert len(ds.cases) == 3
    for case in ds.cases:
        assert [p.name for p in case.images] == [f"{case.name}_0000.nii.gz", f"{case.name}_0001.nii.gz"]
        assert case.label is not None and case.label.name == f"{case.name}.nii.gz"
        vol = read_nifti_channels(case.images)
        image, _ = made[case.name]
        np.testing.assert_array_equal(vol.array, image)  # the channels in order, on the last axis
        np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    fp = fingerprint_msd(out)
    assert fp.channels == 2


def test_import_joins_channel_files_and_renumbered_labels(tmp_path: Path) -> None:
    store, made = _two_channel_store(tmp_path, 2)
    out = tmp_path / "nn"
    export_dataset(store, out, "nnunet")
    target = open_datastore(tmp_path / "dst")
    report = import_paths(target, [out / "imagesTr"], labels_dir=out / "labelsTr", author="reference")
    assert sorted(item.record.name for item in report.images) == sorted(made)
    assert [c.name for c in target.get_schema().foreground] == ["gland", "lesion"]
    for item in report.images:
        image, label = made[item.record.name]
        vol = target.load_image(item.record.id)
        np.testing.assert_array_equal(vol.array, image)
        assert item.revision is not None
        saved = target.load_label(item.record.id, item.revision.revision)
        np.testing.assert_array_equal(np.asarray(saved.array), np.select([label == 3, label == 7], [1, 2], 0))


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _layout(root: Path, meta: dict[str, Any], images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Path:
    for name, arr in images.items():
        _write(root / "imagesTr" / name, arr)
    for name, arr in labels.items():
        _write(root / "labelsTr" / name, arr)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_v1_names_with_msd_json_and_the_emulation_plan(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lab = np.zeros((6, 6, 4), np.uint8)
    lab[1:4, 1:4, 1:3] = 1
    images = {f"c{i}_0000.nii.gz": rng.normal(size=(6, 6, 4)).astype(np.float32) for i in range(6)}
    root = _layout(tmp_path / "v1", {"name": "V1", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}},
                   images, {f"c{i}.nii.gz": lab for i in range(6)})
    ds = open_msd(root)
    assert ds.layout == "nnunet" and [c.name for c in ds.cases] == [f"c{i}" for i in range(6)]
    p = emulation_plan(EmulationConfig(dataset=str(root), out=str(tmp_path / "o")))
    assert sorted(p.images) == [f"c{i}" for i in range(6)]
    assert all(len(files) == 1 and files[0].name.endswith("_0000.nii.gz") for files in p.images.values())
    assert p.labels["c0"].name == "c0.nii.gz"


def test_msd_files_that_look_like_channels_are_not_joined(tmp_path: Path) -> None:
    """An MSD folder whose cases happen to end in four digits keeps one image per file."""
    lab = np.zeros((4, 4, 3), np.uint8)
    names = ["pat_0001.nii.gz", "pat_0002.nii.gz"]
    root = _layout(tmp_path / "msd", {"labels": {"0": "background", "1": "x"}},
                   {n: np.zeros((4, 4, 3), np.float32) for n in names}, {n: lab for n in names})
    ds = open_msd(root)
    assert ds.layout == "msd" and [c.name for c in ds.cases] == ["pat_0001", "pat_0002"]


def test_bad_nnunet_datasets_are_refused_with_the_reason(tmp_path: Path) -> None:
    lab = np.zeros((4, 4, 3), np.uint8)
    img = np.zeros((4, 4, 3), np.float32)
    v2 = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "zone": 1}, "file_ending": ".nii.gz"}
    missing = _layout(tmp_path / "missing", v2, {"a_0000.nii.gz": img, "a_0001.nii.gz": img, "b_0000.nii.gz": img},
                      {"a.nii.gz": lab, "b.nii.gz": lab})
    with pytest.raises(ValidationError, match=r"case 'b'.*_0000 \.\. _0001, found 0000"):
        open_msd(missing)
    with pytest.raises(IngestError, match="case 'b'"):
        import_paths(open_datastore(tmp_path / "d1"), [missing / "imagesTr"], labels_dir=missing / "labelsTr")
    assert open_datastore(tmp_path / "d1").count_images() == 0

    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    with pytest.raises(ValidationError, match="region-based labels \\(whole map"):
        read_dataset_meta(regions)
    png = tmp_path / "png.json"
    png.write_text(json.dumps({"channel_names": {"0": "RGB"}, "labels": {"background": 0, "x": 1}, "file_ending": ".png"}))
    with pytest.raises(ValidationError, match="file_ending '.png' is not supported"):
        read_dataset_meta(png)
    ignore = tmp_path / "ignore.json"
    ignore.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1, "ignore": 2}}))
    with pytest.raises(ValidationError, match="'ignore' label \\(value 2\\)"):
        read_dataset_meta(ignore)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"labels": {"background": 0, "x": 1, "y": 1}}))
    with pytest.raises(ValidationError, match="same value 1"):
        read_dataset_meta(dup)


def test_channel_files_on_different_grids_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a_0000.nii.gz", np.zeros((4, 4, 3), np.float32))
    _write(tmp_path / "a_0001.nii.gz", np.zeros((4, 4, 3), np.float32), AFFINE @ np.diag([2.0, 1, 1, 1]))
    _write(tmp_path / "b_0001.nii.gz", np.zeros((4, 4, 3, 2), np.float32))
    with pytest.raises(ImagingError, match="a_0001.nii.gz.*channel grid"):
        read_nifti_channels([tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"])
    with pytest.raises(ImagingError, match="one 3-D volume"):
        read_nifti_channels([tmp_path / "a_0000.nii.gz", tmp_path / "b_0001.nii.gz"])


def test_a_dataset_folder_imports_its_images_with_their_labels(tmp_path: Path) -> None:
    """Given the dataset folder itself, import takes imagesTr (labelled), imagesTs (unlabelled),
    and never the label maps as images."""
    lab = np.zeros((5, 5, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    root = _layout(tmp_path / "msd", {"labels": {"0": "background", "1": "organ"}, "modality": {"0": "CT"}},
                   {"a.nii.gz": np.ones((5, 5, 4), np.float32), "b.nii.gz": np.ones((5, 5, 4), np.float32)},
                   {"a.nii.gz": lab, "b.nii.gz": lab})
    _write(root / "imagesTs" / "t.nii.gz", np.ones((5, 5, 4), np.float32))
    store = open_datastore(tmp_path / "d")
    report = import_paths(store, [root])
    got = {item.record.name: item.revision for item in report.images}
    assert sorted(got) == ["a", "b", "t"]
    assert got["a"] is not None and got["b"] is not None and got["t"] is None
    assert [c.name for c in store.get_schema().foreground] == ["organ"]
    np.testing.assert_array_equal(np.asarray(store.load_label("a").array), lab)

    other = _layout(tmp_path / "msd2", {"labels": {"0": "background", "1": "organ"}},
                    {"c.nii.gz": np.ones((5, 5, 4), np.float32)}, {"c.nii.gz": lab})
    with pytest.raises(IngestError, match="several dataset folders"):
        import_paths(open_datastore(tmp_path / "e"), [root, other])
