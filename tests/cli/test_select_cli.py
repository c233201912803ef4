"""`segloop select` as a real subprocess: the same ranking as `rank_pool`, cached per model version."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segloop.activelearning import get_strategy, rank_pool
from segloop.imaging.volume import Volume
from segloop.ml.predictor import Predictor
from segloop.ml.training import TrainConfig, train
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema

TINY = {"channels": [8, 16], "num_res_units": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 images with final labels (a tiny model is trained on them), then 3 unlabelled ones."""
    root = tmp_path_factory.mktemp("select") / "data"
    store = open_datastore(root)
    store.set_schema(LabelSchema((LabelClass(0, "background"), LabelClass(1, "organ"))))
    rng = np.random.default_rng(0)
    for n in range(6):
        label = np.zeros((16, 20, 16), np.uint8)
        label[4:11, 5:14, 4:11] = 1
        image = (rng.normal(0, 0.2, label.shape) + label).astype(np.float32) * 100
        rec = store.add_image(Volume(image, np.eye(4)), f"case{n}", "test")
        if n < 3:
            store.save_label(rec.id, label, author="t", status="final")
    cfg = TrainConfig.from_dict(dict(network=TINY, epochs=1, steps_per_epoch=2, batch_size=2, val_split=0.0,
                                     patch_size=[16, 16, 16], seed=0, max_click_iters=1))
    train(store, "seg", cfg, device="cpu")
    store.close()
    return root


def test_select_ranks_like_rank_pool_and_caches(segloop: Callable[..., Any], data_dir: Path) -> None:
    r = segloop("select", "--data", data_dir, "--strategy", "entropy", "--model", "seg", "--count", "2", "--json")
    assert r.code == 0, r.err
    first = r.json()
    assert first["strategy"] == "entropy" and first["model"] == "seg" and first["version"] == 1
    assert first["scored"] == 3  # the whole pool (the 3 images without a final label) was scored
    assert [i["rank"] for i in first["items"]] == [1, 2]

    store = open_datastore(data_dir)
    pool = {r.id for r in store.list_images() if r.label_state != "final"}
    expected = rank_pool(store, get_strategy("entropy"), predictor=Predictor.load(store, "seg"), cache=False)
    store.close()
    assert {i.image_id for i in expected.items} == pool
    assert [i["image_id"] for i in first["items"]] == expected.ids(2)
    assert [i["score"] for i in first["items"]] == pytest.approx([i.score for i in expected.items[:2]], rel=1e-6)

    again = segloop("select", "--data", data_dir, "--strategy", "entropy", "--model", "seg", "--count", "3", "--json")
    assert again.code == 0, again.err
    assert again.json()["scored"] == 0 and all(i["cached"] for i in again.json()["items"])

    table = segloop("select", "--data", data_dir, "--strategy", "entropy", "--model", "seg", "-n", "3")
    assert table.code == 0, table.err
    assert "entropy with seg v1: 3 image(s)" in table.out
    assert [line.split()[1] for line in table.out.splitlines()[2:]] == [i.name for i in expected.items]


def test_select_without_a_model_and_errors(segloop: Callable[..., Any], data_dir: Path) -> None:
    r = segloop("select", "--data", data_dir, "--strategy", "sequential", "-n", "5", "--json")
    assert r.code == 0, r.err
    assert [i["name"] for i in r.json()["items"]] == ["case3", "case4", "case5"]  # import order
    a = segloop("select", "--data", data_dir, "--strategy", "random", "--param", "seed=1", "--json").json()
    b = segloop("select", "--data", data_dir, "--strategy", "random", "--param", "seed=1", "--json").json()
    assert a["items"] == b["items"] and a["params"] == {"seed": 1}

    r = segloop("select", "--data", data_dir, "--strategy", "entropy")
    assert r.code == 2 and "give --model NAME" in r.err
    r = segloop("select", "--data", data_dir, "--strategy", "entropy", "--model", "nope")
    assert r.code != 0 and "nope" in r.err and "Traceback" not in r.err
    r = segloop("select", "--data", data_dir, "--strategy", "mc-dropout", "--model", "seg", "--param", "passes=0")
    assert r.code == 2 and "passes" in r.err
    r = segloop("select", "--data", data_dir, "--strategy", "sequential", "--param", "oops")
    assert r.code == 2 and "KEY=VALUE" in r.err
    r = segloop("select", "--data", data_dir.parent / "empty", "--strategy", "random")
    assert r.code == 2 and "no segloop data folder" in r.err


def test_select_when_everything_is_final(segloop: Callable[..., Any], data_dir: Path, tmp_path: Path) -> None:
    data_dir = Path(shutil.copytree(data_dir, tmp_path / "all-final"))
    store = open_datastore(data_dir)
    for rec in store.list_images():
        if rec.label_state != "final":
            store.save_label(rec.id, np.zeros((16, 20, 16), np.uint8), author="t", status="final")
    store.close()
    r = segloop("select", "--data", data_dir, "--strategy", "entropy", "--model", "seg")
    assert r.code == 0 and "nothing to select" in r.out
    assert segloop("select", "--data", data_dir, "--strategy", "random", "--json").json()["items"] == []
