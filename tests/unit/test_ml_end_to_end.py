"""Tiny end-to-end run of layer 3: train -> infer -> click -> evaluate, in a real LocalDatastore."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click
from segloop.ml.evaluate import evaluate_model
from segloop.ml.predictor import Predictor
from segloop.ml.training import TrainConfig, TrainingCancelled, TrainProgress, train
from segloop.store.errors import NotFoundError
from segloop.store.local import open_datastore
from segloop.store.records import LabelClass, LabelSchema

SHAPE = (20, 28, 20)
TINY_NET = {"channels": [8, 16], "num_res_units": 1, "dropout": 0.1}


def tiny_config(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        network=TINY_NET, epochs=2, steps_per_epoch=3, batch_size=2, val_split=0.25, patch_size=[16, 24, 16],
        lr=5e-3, seed=0, max_click_iters=1,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def synthetic_case(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A bright blob split into two classes (front half 1, back half 2) on a noisy background."""
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array([10, 14, 10]) + rng.integers(-2, 3, size=3)
    d = np.sqrt(((grid - centre[:, None, None, None]) ** 2 / np.array([16, 36, 16])[:, None, None, None]).sum(0))
    label = np.zeros(SHAPE, np.uint8)
    inside = d < 1.0
    label[inside & (grid[1] < centre[1])] = 1
    label[inside & (grid[1] >= centre[1])] = 2
    image = (rng.normal(0, 0.2, SHAPE) + 1.0 * (label == 1) + 1.6 * (label == 2)) * scale
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def store_with_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("mlstore")
    store = open_datastore(root)
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "anterior"), LabelClass(2, "posterior", (0, 255, 0)))))
    rng = np.random.default_rng(0)
    ids = []
    for n in range(4):
        image, label = synthetic_case(rng, scale=10.0 ** n)  # intensities differ by orders of magnitude
        rec = store.add_image(Volume(image, np.eye(4)), f"case{n}", "test")
        store.save_label(rec.id, label, author="t", status="final")
        ids.append(rec.id)
    reports: list[TrainProgress] = []
    # mask_input on here (the previous-mask path); the other trainings below use the default (off).
    version = train(store, "seg", tiny_config(mask_input=True), progress=reports.append, device="cpu")
    return store, ids, version, reports


def test_train_records_version(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, version, reports = store_with_model
    assert version.version == 1
    assert store.get_model("seg").current_version == 1
    assert sorted(i for i, _ in version.trained_on) == sorted(ids)
    assert len(version.metrics["val_images"]) == 1
    assert set(version.metrics["val_dice"]) == {"anterior", "posterior"}
    assert version.config["network"]["arch"] == "unet"
    assert version.config["mask_input"] is True
    # each class and the foreground are one piece in every training label: only the largest stays
    assert version.config["keep_largest"] == [0, 1, 2] and version.metrics["keep_largest"] == [0, 1, 2]
    assert version.metrics["keep_largest_from_labels"] == [0, 1, 2]  # and the validation image confirmed it
    assert reports and reports[-1].message == "saving"
    assert any(r.val_dice is not None for r in reports)
    assert all(r.steps == 6 for r in reports)


def test_infer_click_undo(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, _, _ = store_with_model
    pred = Predictor.load(store, "seg", device="cpu")
    image = store.load_image(ids[0])
    result = pred.predict(image)
    assert result.label.array.shape == SHAPE and result.label.array.dtype == np.uint8
    assert result.probabilities.shape == (3, *SHAPE)
    assert np.allclose(result.probabilities.sum(0), 1.0, atol=1e-4)
    assert result.model == "seg" and result.version == 1

    session = pred.session(image)
    before = session.prediction.label.array.copy()
    assert np.array_equal(before, result.label.array)  # the session starts from the automatic result
    # Click the class the current mask does *not* have at a voxel.
    point = (2, 2, 2)
    value = 2 if before[point] != 2 else 1
    after = session.add_clicks([Click(value, point)])
    assert after.label.array[point] == value
    assert after.label.array[point] != before[point]
    assert len(session.clicks) == 1
    undone = session.undo()
    assert np.array_equal(undone.label.array, before)
    assert session.clicks == []


def test_session_from_initial_label(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, _, _ = store_with_model
    pred = Predictor.load(store, "seg", version=1, device="cpu")
    image = store.load_image(ids[1])
    initial = Volume(np.zeros(SHAPE, np.uint8), image.affine)
    session = pred.session(image, initial)
    assert not session.prediction.label.array.any()
    out = session.add_clicks([Click(1, (10, 10, 10))])
    assert out.label.array[10, 10, 10] == 1


def test_bad_clicks_and_inputs(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, _, _ = store_with_model
    pred = Predictor.load(store, "seg", device="cpu")
    image = store.load_image(ids[0])
    session = pred.session(image)
    with pytest.raises(ValueError, match=r"outside the volume"):
        session.add_clicks([Click(1, (20, 0, 0))])
    with pytest.raises(ValueError, match=r"unknown class 7"):
        session.add_clicks([Click(7, (1, 1, 1))])
    assert session.clicks == []
    with pytest.raises(ValueError, match=r"channel"):
        pred.predict(Volume(np.zeros((*SHAPE, 2), np.float32), np.eye(4)))
    with pytest.raises(NotFoundError):
        Predictor.load(store, "nope")
    with pytest.raises(NotFoundError):
        Predictor.load(store, "seg", version=99)


def test_evaluate(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, _, _ = store_with_model
    seen: list[tuple[int, int]] = []
    report = evaluate_model(store, "seg", image_ids=ids[:2], progress=lambda d, t: seen.append((d, t)))
    assert [r["image_id"] for r in report["per_image"]] == ids[:2]
    assert set(report["mean"]) == {"anterior", "posterior"}
    for m in report["mean"].values():
        assert 0.0 <= m["dice"] <= 1.0 and 0.0 <= m["iou"] <= 1.0
    assert seen == [(1, 2), (2, 2)]


def test_cancel_and_failure_keep_previous_version(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, _, _, _ = store_with_model
    staging_before = sorted(Path(store.staging_dir()).iterdir())
    cancel = threading.Event()

    def stop_after_first(p: TrainProgress) -> None:
        cancel.set()

    with pytest.raises(TrainingCancelled):
        train(store, "seg", tiny_config(), fine_tune=1, progress=stop_after_first, cancel=cancel, device="cpu")

    def explode(p: TrainProgress) -> None:
        if p.step == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train(store, "seg", tiny_config(), progress=explode, device="cpu")
    model = store.get_model("seg")
    assert model.current_version == 1 and len(model.versions) == 1
    assert sorted(Path(store.staging_dir()).iterdir()) == staging_before


def test_fine_tune_adds_version(store_with_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _, _, _ = store_with_model
    v2 = train(store, "seg", tiny_config(epochs=1), fine_tune=1, device="cpu")
    assert v2.version == 2 and v2.config["fine_tuned_from"] == 1
    assert store.get_model("seg").current_version == 2
    store.set_current_version("seg", 1)  # roll back
    assert Predictor.load(store, "seg").version == 1
    # a version added beside the current one (the active-learning loop decides afterwards)
    v3 = train(store, "seg", tiny_config(epochs=1), fine_tune=1, device="cpu", make_current=False)
    model = store.get_model("seg")
    assert v3.version == 3 and model.current_version == 1 and [v.version for v in model.versions] == [1, 2, 3]
    assert Predictor.load(store, "seg").version == 1 and Predictor.load(store, "seg", 3).version == 3


def test_bad_training_input(tmp_path: Path) -> None:
    store = open_datastore(tmp_path / "s")
    store.set_schema(LabelSchema((LabelClass(0, "background"), LabelClass(1, "organ"))))
    with pytest.raises(ValueError, match="no labelled images"):
        train(store, "m", tiny_config())
    image, label = synthetic_case(np.random.default_rng(1), 1.0)
    rec = store.add_image(Volume(image, np.eye(4)), "only", "test")
    store.save_label(rec.id, np.minimum(label, 1), author="t", status="final")
    with pytest.raises(ValueError, match="too few"):
        train(store, "m", tiny_config())
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig.from_dict({"arch": "resnet9000"})
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({"epochs": 0})
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="multiples of"):
        TrainConfig.from_dict({"patch_size": [10, 16, 16]})
    assert store.list_models() == []


def test_other_spacing_is_resampled_back(store_with_model) -> None:  # type: ignore[no-untyped-def]
    store, ids, _, _ = store_with_model
    pred = Predictor.load(store, "seg", device="cpu")
    assert pred.spec.spacing == (1.0, 1.0, 1.0)
    coarse = Volume(np.random.default_rng(2).normal(size=(11, 13, 9)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    result = pred.predict(coarse)
    assert result.label.array.shape == (11, 13, 9)
    assert result.probabilities.shape == (3, 11, 13, 9)
    assert np.allclose(result.label.affine, coarse.affine)
    session = pred.session(coarse)
    out = session.add_clicks([Click(2, (10, 12, 8))])
    assert out.label.array[10, 12, 8] == 2
    pred.merge_radius_mm = 4.0  # local merge: voxels far from the click keep their label
    session = pred.session(coarse)
    before = session.prediction.label.array.copy()
    out = session.add_clicks([Click(1, (0, 0, 0))])
    assert out.label.array[0, 0, 0] == 1
    assert np.array_equal(out.label.array[6:, 6:, 6:], before[6:, 6:, 6:])


def test_training_is_deterministic_for_a_seed(store_with_model) -> None:  # type: ignore[no-untyped-def]
    import torch

    from segloop.ml.modelspec import load_checkpoint

    store, _, _, _ = store_with_model
    cfg = tiny_config(epochs=1, steps_per_epoch=2)
    a = train(store, "det-a", cfg, device="cpu")
    b = train(store, "det-b", cfg, device="cpu")
    sa = load_checkpoint(a.checkpoint)["state_dict"]
    sb = load_checkpoint(b.checkpoint)["state_dict"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.trained_on == b.trained_on and a.metrics["val_images"] == b.metrics["val_images"]
    assert a.config["mask_input"] is False


def test_box_input_training_makes_a_model_that_reads_boxes(store_with_model) -> None:  # type: ignore[no-untyped-def]
    from segloop.ml import prompts

    store, ids, _, _ = store_with_model
    with pytest.raises(ValueError, match="box_prob"):
        tiny_config(box_input=True, box_prob=1.5)
    version = train(store, "boxes", tiny_config(epochs=1, steps_per_epoch=2, box_input=True, click_prob=1.0), device="cpu")
    assert version.config["box_input"] is True
    pred = Predictor.load(store, "boxes", device="cpu")
    assert pred.spec.box_input and pred.spec.in_channels == 1 + 3 + 2
    first = next(p for p in pred.net.parameters() if p.dim() == 5)
    assert first.shape[1] == 1 + 3 + 2  # the checkpoint's first convolution takes the box channels
    session = pred.session(store.load_image(ids[0]))
    box = prompts.Box(1, (4, 6, 4), (15, 20, 15))
    session.add_box(box)
    assert session.clicks == [] and not (np.asarray(session.prediction.label.array)[prompts.box_outside(box, SHAPE)] == 1).any()
    assert "box_input" not in store.get_model("seg").version().config  # the default stays click-only


def test_automatic_result_is_mirrored_along_the_training_flips(store_with_model) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    store, ids, _, _ = store_with_model
    pred = Predictor.load(store, "seg", version=1, device="cpu")
    assert pred.mirror_axes == (0,)  # the training flipped axis 0 (TrainConfig's default)
    pred.spec = dataclasses.replace(pred.spec, keep_largest=())  # the probabilities as they come
    image = store.load_image(ids[2])
    data = pred.prepare(image).data
    plain = pred._probabilities(data, None)
    mirrored = np.flip(pred._probabilities(np.ascontiguousarray(data[:, ::-1]), None), axis=1)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the two passes differ, so the mean is a real test
    result = pred.predict(image)
    assert np.allclose(result.probabilities, (plain + mirrored) / 2, atol=1e-5)
    assert np.array_equal(pred.session(image).prediction.label.array, result.label.array)
    pred.mirror_axes = ()
    assert np.allclose(pred.predict(image).probabilities, plain, atol=1e-6)


def test_server_predictor_cache_mirror_setting(store_with_model) -> None:  # type: ignore[no-untyped-def]
    from segloop.server.workers import PredictorCache

    store, _, _, _ = store_with_model
    assert PredictorCache(store, "cpu").get("seg").mirror_axes == (0,)
    assert PredictorCache(store, "cpu", mirror=False).get("seg").mirror_axes == ()
