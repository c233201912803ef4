"""`segloop train / models / infer / evaluate` as real subprocesses on a tiny synthetic store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema

TINY = {"network": {"channels": [8, 16], "num_res_units": 1}, "patch_size": [16, 16, 16], "steps_per_epoch": 2}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    store = open_datastore(root)
    store.set_schema(LabelSchema((LabelClass(0, "background"), LabelClass(1, "anterior"), LabelClass(2, "posterior"))))
    rng = np.random.default_rng(0)
    for n in range(3):
        label = np.zeros((16, 20, 16), np.uint8)
        label[4:10, 5:10, 4:11] = 1
        label[4:10, 10:15, 4:11] = 2
        image = (rng.normal(0, 0.2, label.shape) + label).astype(np.float32) * 100
        rec = store.add_image(Volume(image, np.eye(4)), f"case{n}", "test")
        store.save_label(rec.id, label, author="t", status="final")
    store.close()
    return root


def test_train_models_infer_evaluate(segloop: Callable[..., Any], data_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    r = segloop("train", "hippo", "--data", data_dir, "--config", cfg, "--epochs", "2", "--batch-size", "2",
                "--val-split", "0.34", "--quiet", "--json")
    assert r.code == 0, r.err
    assert r.json()["version"] == 1

    r = segloop("models", "--data", data_dir, "--json")
    assert r.code == 0, r.err
    [model] = r.json()
    assert model["name"] == "hippo" and model["current_version"] == 1
    r = segloop("models", "--data", data_dir)
    assert "* v1" in r.out

    store = open_datastore(data_dir)
    image_id = store.list_images()[0].id
    store.close()
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps([{"class": "anterior", "points": [[0, 0, 0]]}, {"class": "background", "points": [[7, 7, 7]]}]))
    out = tmp_path / "out.nii.gz"
    r = segloop("infer", "hippo", image_id, "--data", data_dir, "--clicks", clicks, "-o", out, "--save", "--json")
    assert r.code == 0, r.err
    info = r.json()
    assert info["clicks"] == 2 and info["revision"] == 2
    label = read_nifti(out).array
    assert label[0, 0, 0] == 1 and label[7, 7, 7] == 0
    store = open_datastore(data_dir)
    rev = store.get_revision(image_id)
    assert rev.source == "model:hippo@1" and rev.status == "draft" and rev.parent == 1
    store.close()

    report = tmp_path / "eval.json"
    r = segloop("evaluate", "hippo", "--data", data_dir, "--json", report)
    assert r.code == 0, r.err
    assert "anterior" in r.out and "HD95" in r.out
    data = json.loads(report.read_text())
    assert len(data["per_image"]) == 3  # the draft saved above does not hide the final revision
    assert set(data["mean"]) == {"anterior", "posterior"}


def test_user_errors(segloop: Callable[..., Any], data_dir: Path, tmp_path: Path) -> None:
    r = segloop("infer", "nope", "case0", "--data", data_dir, "-o", tmp_path / "x.nii.gz")
    assert r.code == 2 and "model 'nope' not found" in r.err and "Traceback" not in r.err
    r = segloop("train", "m", "--data", data_dir, "--epochs", "0")
    assert r.code == 2 and "epochs" in r.err
    r = segloop("train", "m", "--data", data_dir, "--val-split", "0.99", "--epochs", "1")
    assert r.code == 2 and "too few" in r.err
    r = segloop("evaluate", "nope", "--data", data_dir)
    assert r.code == 2 and "not found" in r.err
