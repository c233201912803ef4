"""Tiny synthetic volumes and a tiny trained model for the active-learning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.volume import Volume
from segloop.store.records import LabelClass, LabelSchema

SHAPE = (16, 24, 16)
TINY_NET = {"channels": [8, 16], "num_res_units": 1, "dropout": 0.2}
SCHEMA = LabelSchema(
    (LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "anterior"), LabelClass(2, "posterior", (0, 255, 0)))
)


def tiny_train_config(**kw: Any) -> Any:
    from segloop.ml.training import TrainConfig

    base: dict[str, Any] = dict(
        network=TINY_NET, epochs=3, steps_per_epoch=4, batch_size=2, val_split=0.0, patch_size=[16, 24, 16],
        lr=1e-2, seed=0, max_click_iters=1, click_prob=0.3, num_threads=1,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def synthetic_case(rng: np.random.Generator, noise: float = 0.15, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid split into class 1 (front half) and class 2 (back half) on a noisy background."""
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape) / 2 + rng.integers(-1, 2, size=3)
    radii = np.array(shape) / 3.5
    d = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    inside = d < 1.0
    label[inside & (grid[1] < centre[1])] = 1
    label[inside & (grid[1] >= centre[1])] = 2
    image = rng.normal(0, noise, shape) + 1.0 * (label == 1) + 1.8 * (label == 2)
    return image.astype(np.float32), label


def make_store(root: Path, n_train: int = 4, n_pool: int = 4, seed: int = 0) -> tuple[Any, list[str], list[str], dict[str, np.ndarray]]:
    """A LocalDatastore with ``n_train`` final-labelled cases and ``n_pool`` unlabelled ones.

    Returns:
        store, labelled ids, pool ids, reference labels of every image by id.
    """
    from segloop.store.local import open_datastore

    store = open_datastore(root)
    store.set_schema(SCHEMA)
    rng = np.random.default_rng(seed)
    train_ids, pool_ids, refs = [], [], {}
    for n in range(n_train + n_pool):
        image, label = synthetic_case(rng)
        rec = store.add_image(Volume(image * 100.0, np.eye(4)), f"case{n:02d}", "test")
        refs[rec.id] = label
        if n < n_train:
            store.save_label(rec.id, label, author="reference", status="final")
            train_ids.append(rec.id)
        else:
            pool_ids.append(rec.id)
    return store, train_ids, pool_ids, refs
