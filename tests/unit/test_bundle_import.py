"""Models users bring: MONAI bundles and TorchScript files become model versions (segloop.ml.model_import)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segloop.imaging.volume import Volume
from segloop.ml.imported import ModelImportError
from segloop.ml.model_import import import_model
from segloop.ml.modelspec import ModelSpec, normalize_image
from segloop.ml.predictor import Predictor
from segloop.ml.training import TrainConfig, train
from segloop.store.local import LocalDatastore, open_datastore
from segloop.store.records import LabelClass, LabelSchema
from tests.unit.tiny_bundle import CLASSES, NET_DEF, make_bundle, make_torchscript, tiny_unet, zip_folder

SCHEMA = LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "Anterior"), LabelClass(2, "Posterior", (0, 255, 0))))
SHAPE = (16, 16, 16)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1200, SHAPE).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> LocalDatastore:
    s = open_datastore(tmp_path / "data")
    s.set_schema(SCHEMA)
    for n in range(3):
        rec = s.add_image(Volume(_image(n), np.eye(4)), f"case{n}", "test")
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 4:8, 4:10] = 1
        label[4:10, 8:12, 4:10] = 2
        s.save_label(rec.id, label, author="t", status="final")
    return s


def _state(store: LocalDatastore) -> tuple[Any, ...]:
    """What a refused import must leave alone: models, versions, schema and the model files."""
    files = sorted(p.relative_to(store.root).as_posix() for p in (store.root / "models").rglob("*")) \
        if (store.root / "models").exists() else []
    staging = sorted(p.name for p in store.staging_dir().iterdir())
    return ([m.to_dict() for m in store.list_models()], store.get_schema(), files, staging)


def _direct(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(x[None]))
    return out.argmax(dim=1)[0].numpy().astype(np.uint8)


def test_bundle_becomes_a_version_that_segments_like_the_bundle(store: LocalDatastore, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    version, imported = import_model(store, bundle, "hippo-bundle")
    assert version.version == 1 and version.trained_on == ()
    config = version.config
    assert config["input_kind"] == "automatic"
    assert config["network"]["arch"] == "monai" and config["network"]["target"] == "UNet"
    assert config["intensity"] == {"kind": "range", "a_min": 0.0, "a_max": 1000.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
    assert config["spacing"] == [1.0, 1.0, 1.0] and config["patch_size"] == [16, 16, 16]
    assert [c["name"] for c in config["classes"]] == ["background", "Anterior", "Posterior"]
    assert imported.fine_tunable and any("RAS" in n for n in imported.notes)
    assert store.get_model("hippo-bundle").current_version == 1

    predictor = Predictor.load(store, "hippo-bundle", device="cpu")
    image = store.load_image(store.list_images()[0].id)
    got = predictor.predict(image).label.array
    # The bundle's own recipe: ScaleIntensityRanged(0..1000 -> 0..1, clip), then its UNet.
    x = np.clip(image.array / 1000.0, 0.0, 1.0).astype(np.float32)[None]
    assert np.array_equal(got, _direct(tiny_unet(), x))


def test_bundle_zip_equals_folder(store: LocalDatastore, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "tiny_bundle")
    v1, _ = import_model(store, bundle, "b")
    v2, _ = import_model(store, zip_folder(bundle, tmp_path / "tiny_bundle.zip"), "b")
    assert v2.version == 2
    assert {k: v for k, v in v1.config.items() if k != "imported"} == {k: v for k, v in v2.config.items() if k != "imported"}
    assert v2.config["imported"]["sha256"] and v2.config["imported"]["file"] == "tiny_bundle.zip"


def test_torchscript_with_its_json(store: LocalDatastore, tmp_path: Path) -> None:
    ts = make_torchscript(tmp_path / "seg.ts")
    version, imported = import_model(store, ts, "ts-model")
    assert version.config["network"]["arch"] == "torchscript" and not imported.fine_tunable
    predictor = Predictor.load(store, "ts-model", device="cpu")
    image = store.load_image(store.list_images()[0].id)
    got = predictor.predict(image).label.array
    x = normalize_image(image.array, {"kind": "zscore", "nonzero": False})
    assert np.array_equal(got, _direct(tiny_unet(seed=1), x))
    with pytest.raises(ValueError, match="TorchScript model .*cannot be trained or fine-tuned"):
        train(store, "ts-model", TrainConfig.from_dict({"epochs": 1, "steps_per_epoch": 1, "val_split": 0}),
              fine_tune=1, device="cpu")
    assert len(store.get_model("ts-model").versions) == 1


def test_torchscript_needs_classes_and_patch(store: LocalDatastore, tmp_path: Path) -> None:
    ts = make_torchscript(tmp_path / "seg.ts", {"classes": ["background", "Anterior", "Posterior"]})
    before = _state(store)
    with pytest.raises(ModelImportError, match="missing key 'patch_size'"):
        import_model(store, ts, "ts-model")
    (tmp_path / "seg.json").unlink()
    with pytest.raises(ModelImportError, match="needs a model JSON"):
        import_model(store, ts, "ts-model")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"classes": ["background", "Anterior"], "patch_size": [16, 16, 16]}))
    with pytest.raises(ModelImportError, match="3 output channel.*class list has 2"):
        import_model(store, ts, "ts-model", model_json=wrong)
    assert _state(store) == before


def _metadata(**outputs: Any) -> dict[str, Any]:
    pred = {"type": "image", "format": "segmentation", "num_channels": 3, "channel_def": CLASSES, **outputs}
    return {"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16]}},
                                    "outputs": {"pred": pred}}}


def _inference(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "input_channels": 1,
        "network_def": dict(NET_DEF),
        "preprocessing": {"transforms": [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}]},
        "inferer": {"roi_size": [16, 16, 16]},
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


BAD_BUNDLES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "no network_def": (lambda p: make_bundle(p, inference=_inference(network_def=None)), r"inference.json: missing key 'network_def'"),
    "no network_data_format": (lambda p: make_bundle(p, metadata={"name": "x"}),
                               r"metadata.json: missing key 'network_data_format'"),
    "no channel_def": (lambda p: make_bundle(p, metadata=_metadata(channel_def=None)), r"missing key .*channel_def"),
    "class not in schema": (lambda p: make_bundle(p, metadata=_metadata(channel_def={"0": "background", "1": "Spleen", "2": "Posterior"})),
                            r"class 'Spleen' \(output channel 1\) is not in the label schema"),
    "metadata channels differ": (lambda p: make_bundle(p, inference=_inference(input_channels=2)),
                                 r"input channel count does not match: .* 1 channel\(s\), .*in_channels is 2"),
    "weights of another net": (lambda p: make_bundle(p, weights=tiny_unet(in_channels=2).state_dict()),
                               r"model.pt does not fit .*network_def: size mismatch"),
    "not a state dict": (lambda p: make_bundle(p, weights={"epoch": 3}), r"not a state dict"),
    "sigmoid outputs": (lambda p: make_bundle(p, inference=_inference(
        postprocessing={"transforms": [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]})), r"sigmoid"),
    "code in network_def": (lambda p: make_bundle(p, inference=_inference(
        network_def={**NET_DEF, "channels": "$__import__('os').getcwd()"})), r"cannot be read without running code"),
    "not a MONAI network": (lambda p: make_bundle(p, inference=_inference(network_def={**NET_DEF, "_target_": "mylib.Net"})),
                            r"not a class of monai.networks.nets"),
    "2-D network": (lambda p: make_bundle(p, inference=_inference(network_def={**NET_DEF, "spatial_dims": 2})), r"spatial_dims is 2"),
    "unreadable intensity": (lambda p: make_bundle(p, inference=_inference(
        preprocessing={"transforms": [{"_target_": "ScaleIntensityd", "keys": "image"}]})),
        r"intensity pre-processing cannot be read reliably"),
    "no patch size": (lambda p: make_bundle(p, metadata=_metadata(), inference=_inference(inferer=None) | {}),
                      r"no readable patch size"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_bundle_is_refused_and_changes_nothing(case: str, store: LocalDatastore, tmp_path: Path) -> None:
    build, message = BAD_BUNDLES[case]
    if case == "no patch size":  # the metadata's spatial_shape would give one: drop it too
        def build(p: Path) -> Path:  # noqa: F811
            meta = _metadata()
            del meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
            return make_bundle(p, metadata=meta, inference=_inference(inferer=None))
    bundle = build(tmp_path / "bundle")
    before = _state(store)
    with pytest.raises(ModelImportError, match=message):
        import_model(store, bundle, "bad")
    assert _state(store) == before


def test_unreadable_intensity_is_taken_from_the_model_json(store: LocalDatastore, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", inference=_inference(
        preprocessing={"transforms": [{"_target_": "ScaleIntensityd", "keys": "image"}]}))
    override = tmp_path / "model.json"
    override.write_text(json.dumps({"intensity": {"kind": "range", "a_min": 0, "a_max": 1200, "b_min": 0, "b_max": 1}}))
    version, _ = import_model(store, bundle, "b", model_json=override)
    assert version.config["intensity"]["a_max"] == 1200.0


def test_images_with_other_channel_count_are_refused(store: LocalDatastore, tmp_path: Path) -> None:
    meta = _metadata()
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    bundle = make_bundle(tmp_path / "bundle", metadata=meta, inference=_inference(input_channels=2),
                         weights=tiny_unet(in_channels=2).state_dict())
    before = _state(store)
    with pytest.raises(ModelImportError, match=r"takes 2 image channel\(s\), this store's images have 1"):
        import_model(store, bundle, "b")
    assert _state(store) == before


def test_unsafe_zip_and_other_network_under_same_name(store: LocalDatastore, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../configs/metadata.json", "{}")
    before = _state(store)
    with pytest.raises(ModelImportError, match=r"\.\."):
        import_model(store, evil, "b")
    assert _state(store) == before
    import_model(store, make_bundle(tmp_path / "one"), "b")
    other = make_bundle(tmp_path / "two", metadata=_metadata(channel_def={"0": "background", "1": "Posterior", "2": "Anterior"}))
    before = _state(store)
    with pytest.raises(ModelImportError, match="already exists with another network"):
        import_model(store, other, "b")
    assert _state(store) == before


def test_add_classes_extends_the_schema(store: LocalDatastore, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", metadata=_metadata(channel_def={"0": "background", "1": "Spleen", "2": "Posterior"}))
    version, imported = import_model(store, bundle, "b", add_classes=True)
    spleen = store.get_schema().by_name("Spleen")
    assert spleen.value == 3 and [c.name for c in imported.new_classes] == ["Spleen"]
    assert [c["value"] for c in version.config["classes"]] == [0, 3, 2]


def test_session_refuses_clicks_but_takes_the_brush(store: LocalDatastore, tmp_path: Path) -> None:
    from segloop.ml.clicks import Click

    import_model(store, make_bundle(tmp_path / "bundle"), "b")
    predictor = Predictor.load(store, "b", device="cpu")
    session = predictor.session(store.load_image(store.list_images()[0].id))
    with pytest.raises(ValueError, match="automatic-only .*cannot follow clicks"):
        session.add_clicks([Click((8, 8, 8), 1)])
    brushed = session.prediction.label.array.copy()
    brushed[2:5, 2:5, 2:5] = 2
    assert np.array_equal(session.set_label(brushed).label.array, brushed)
    assert session.undo_depth == 1


def test_fine_tune_an_imported_bundle_then_roll_back(store: LocalDatastore, tmp_path: Path) -> None:
    import_model(store, make_bundle(tmp_path / "bundle"), "b")
    image = store.load_image(store.list_images()[0].id)
    before = Predictor.load(store, "b", device="cpu").predict(image).label.array
    cfg = TrainConfig.from_dict({"epochs": 1, "steps_per_epoch": 2, "batch_size": 1, "val_split": 0, "lr": 0.05, "seed": 0})
    v2 = train(store, "b", cfg, fine_tune=1, device="cpu")
    assert v2.version == 2 and v2.config["fine_tuned_from"] == 1
    spec = ModelSpec.from_config(v2.config)
    assert spec.input_kind == "automatic" and spec.intensity == ModelSpec.from_config(store.get_model("b").version(1).config).intensity
    assert len(v2.trained_on) == 3
    tuned = Predictor.load(store, "b", device="cpu")
    assert tuned.version == 2 and tuned.net.state_dict().keys() == Predictor.load(store, "b", 1, device="cpu").net.state_dict().keys()
    store.set_current_version("b", 1)  # roll back
    back = Predictor.load(store, "b", device="cpu")
    assert back.version == 1 and np.array_equal(back.predict(image).label.array, before)


def test_normalize_image_kinds() -> None:
    x = np.array([0.0, 50.0, 100.0, 200.0], dtype=np.float32).reshape(1, 1, 4)
    r = normalize_image(x, {"kind": "range", "a_min": 0.0, "a_max": 100.0, "b_min": 0.0, "b_max": 1.0, "clip": True})
    assert np.allclose(r.ravel(), [0.0, 0.5, 1.0, 1.0])
    r = normalize_image(x, {"kind": "range", "a_min": 0.0, "a_max": 100.0, "b_min": -1.0, "b_max": 1.0, "clip": False})
    assert np.allclose(r.ravel(), [-1.0, 0.0, 1.0, 3.0])
    z = normalize_image(x, {"kind": "zscore", "nonzero": True})
    nz = np.array([50.0, 100.0, 200.0])
    assert z.ravel()[0] == 0.0 and np.allclose(z.ravel()[1:], (nz - nz.mean()) / nz.std())
    assert np.array_equal(normalize_image(x, {"kind": "none"}).ravel(), x.ravel())
    with pytest.raises(ValueError, match="intensity kind"):
        ModelSpec.from_config({"network": {"arch": "unet"}, "classes": [{"value": 0, "name": "bg"}], "image_channels": 1,
                               "patch_size": [16, 16, 16], "intensity": {"kind": "minmax"}})
