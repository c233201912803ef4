"""Training costs: validation takes a bounded share, pre-processed images are cached between runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.ml import case_cache
from segloop.ml.training import TrainConfig, TrainProgress, train
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema
from tests.unit.test_ml_end_to_end import synthetic_case, tiny_config


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_datastore(tmp_path / "d")
    s.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "a"), LabelClass(2, "b", (0, 255, 0)))))
    rng = np.random.default_rng(1)
    for n in range(6):
        image, label = synthetic_case(rng, scale=1.0 + n)
        rec = s.add_image(Volume(image, np.eye(4)), f"c{n}", "test")
        s.save_label(rec.id, label, author="t", status="final")
    return s


def test_validation_share_is_bounded_and_the_last_epoch_validates(store) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config(epochs=6, steps_per_epoch=1, val_split=0.34, click_prob=0.0, val_budget=0.01)
    v = train(store, "m", cfg, device="cpu")
    runs = v.metrics["validations"]
    assert 1 <= runs < 6  # due every epoch, but 1 % of the time allows only the first and the last
    assert v.metrics["history"][-1].get("val_dice") is not None
    assert v.metrics["validation_seconds"] >= 0
    v2 = train(store, "m", tiny_config(epochs=6, steps_per_epoch=1, val_split=0.34, click_prob=0.0, val_budget=1.0),
               device="cpu")
    assert v2.metrics["validations"] == 6


def test_validation_uses_at_most_val_max_images(store) -> None:  # type: ignore[no-untyped-def]
    v = train(store, "m", tiny_config(epochs=1, steps_per_epoch=1, val_split=0.34, val_max_images=1), device="cpu")
    assert len(v.metrics["val_images"]) == 2  # held out of training: both
    assert len(v.metrics["validated_on"]) == 1 and v.metrics["validated_on"][0] in v.metrics["val_images"]


def test_preprocessed_images_are_cached_between_trainings(store) -> None:  # type: ignore[no-untyped-def]
    case_cache.IMAGES.clear()
    hits0 = case_cache.IMAGES.hits
    first = train(store, "m", tiny_config(epochs=1, steps_per_epoch=2, val_split=0.0), device="cpu")
    assert len(case_cache.IMAGES) == 6
    again = train(store, "m", tiny_config(epochs=1, steps_per_epoch=2, val_split=0.0), fine_tune=first.version,
                  device="cpu")
    assert case_cache.IMAGES.hits - hits0 >= 6 and again.version == first.version + 1
    cached = next(iter(case_cache.IMAGES._items.values()))
    assert not cached.flags.writeable  # shared between trainings: read-only


def test_array_cache_is_bounded_lru() -> None:
    c = case_cache.ArrayCache(max_bytes=3 * 800)
    for k in range(4):
        c.put(k, np.zeros(100, np.float64))  # 800 bytes each
    assert len(c) == 3 and c.get(0) is None and c.get(3) is not None and c.nbytes == 2400
    c.put("big", np.zeros(1000, np.float64))  # larger than the bound: not kept
    assert c.get("big") is None and len(c) == 3


def test_progress_fraction_rises_to_one(store) -> None:  # type: ignore[no-untyped-def]
    seen: list[TrainProgress] = []
    train(store, "m", tiny_config(epochs=2, steps_per_epoch=2, val_split=0.0), progress=seen.append, device="cpu")
    fr = [p.fraction for p in seen if p.fraction is not None]
    assert fr == sorted(fr) and fr[-1] == 1.0 and fr[0] == 0.0  # the plan's report, then the steps
    assert seen[0].message.startswith("plan: ") and [p.fraction for p in seen][1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="val_budget"):
        TrainConfig.from_dict({"val_budget": 0})
