"""``segloop models import``: a MONAI bundle (folder or zip) or a TorchScript file becomes a model version.

`import_model` checks everything before it touches the store -- the bundle's configs and weights
(`segloop.ml.bundle`), the TorchScript file and its model JSON (`segloop.ml.imported`), a forward
pass on one patch, the class mapping onto the label schema, the channel count of the store's
images, the model name and, for an existing model, that the import has the same network and
classes (a model's versions share them) -- and only then writes the checkpoint to the staging
folder and adds the version (`Datastore.add_model_version`, which moves it in atomically). A
refused import leaves the store as it was.

The version is like any other: ``Predictor.load`` runs it (automatic segmentation; it takes no
clicks, ``input_kind`` automatic), ``segloop models`` lists it, ``set_current_version`` rolls
back to it or away from it, and a bundle with a MONAI network and a state dict can start a
fine-tune (``segloop train MODEL --fine-tune N``) where its classes are the schema's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from segloop.ml.bundle import find_bundle_root, read_bundle
from segloop.ml.imported import ImportedModel, ModelImportError, read_model_json, read_torchscript
from segloop.store.base import Datastore
from segloop.store.errors import NotFoundError, StoreError
from segloop.store.records import LabelSchema, ModelVersion

TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".jit", ".torchscript")


@contextlib.contextmanager
def _unpacked(path: Path, scratch: Path) -> Iterator[Path]:
    """A bundle folder for ``path`` (a folder, or a zip extracted safely into ``scratch``)."""
    if path.is_dir():
        yield path
        return
    from segloop.imaging.archive import safe_extract_zip
    from segloop.imaging.errors import ImagingError

    dest = scratch / "bundle"
    try:
        safe_extract_zip(path, dest)
    except ImagingError as exc:
        raise ModelImportError(str(exc)) from exc
    yield dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_model(
    path: Path, schema: LabelSchema, model_json: Path | None, scratch: Path, add_classes: bool = False
) -> ImportedModel:
    """Check the model at ``path`` (bundle folder, bundle zip, or TorchScript file)."""
    path = Path(path)
    if not path.exists():
        raise ModelImportError(f"{path}: no such file or folder")
    overrides = read_model_json(model_json)
    json_name = str(model_json) if model_json is not None else "model JSON"
    if path.is_dir() or path.suffix.lower() == ".zip":
        with _unpacked(path, scratch) as folder:
            root = find_bundle_root(folder)
            if root is None:
                raise ModelImportError(f"{path}: missing configs/metadata.json: not a MONAI bundle")
            return read_bundle(root, schema, overrides, json_name=json_name, add_classes=add_classes)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        if model_json is None:
            beside = path.with_suffix(".json")
            if not beside.is_file():
                raise ModelImportError(
                    f"{path}: a TorchScript model needs a model JSON with its classes and patch size "
                    f"(--config FILE.json, or {beside.name} beside it)"
                )
            overrides, json_name = read_model_json(beside), str(beside)
        return read_torchscript(path, overrides, schema, json_name=json_name, add_classes=add_classes)
    raise ModelImportError(f"{path}: not a MONAI bundle (folder or .zip) or a TorchScript file ({', '.join(TORCHSCRIPT_SUFFIXES)})")


def _check_store(store: Datastore, name: str, imported: ImportedModel, schema: LabelSchema) -> dict[str, Any]:
    """Problems between the model and the store; returns the model config to create or match."""
    from segloop.store.local import check_model_name

    check_model_name(name)
    spec = imported.spec
    channels = sorted({r.channels for r in store.list_images()})
    if channels and channels != [spec.image_channels]:
        raise ModelImportError(
            f"input channel count does not match: the model takes {spec.image_channels} image channel(s), "
            f"this store's images have {', '.join(map(str, channels))}"
        )
    config = spec.to_config()
    model_config = {"network": spec.network, "classes": config["classes"]}
    try:
        existing = store.get_model(name)
    except NotFoundError:
        return model_config
    if existing.config != model_config:
        raise ModelImportError(
            f"model {name!r} already exists with another network or classes; import under a new name (--name)"
        )
    return model_config


def import_model(
    store: Datastore,
    path: Path,
    name: str,
    *,
    model_json: Path | None = None,
    add_classes: bool = False,
    make_current: bool = True,
) -> tuple[ModelVersion, ImportedModel]:
    """Import ``path`` as a new version of model ``name``; see the module docstring.

    Raises:
        ModelImportError: the model does not fit (the message names the file, key or value).
        StoreError: a store-side refusal (bad model name, ...). In both cases nothing was stored.
    """
    path = Path(path)
    schema = store.get_schema()
    with tempfile.TemporaryDirectory(prefix=".tmp-import-", dir=store.staging_dir()) as tmp:
        scratch = Path(tmp)
        imported = read_model(path, schema, model_json, scratch, add_classes=add_classes)
        try:
            model_config = _check_store(store, name, imported, schema)
        except StoreError as exc:
            raise ModelImportError(str(exc)) from exc
        spec = imported.spec
        source = {
            "kind": imported.kind,
            "file": path.name,
            "sha256": _sha256(path) if path.is_file() else None,
            "fine_tunable": imported.fine_tunable,
            "notes": list(imported.notes),
        }
        spec.extra = {"imported": source}
        config = spec.to_config()
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{name}-", suffix=".pt", dir=store.staging_dir())
        os.close(fd)
        ckpt = Path(tmp_name)
        try:
            if imported.state_dict is not None:
                torch.save({"format": "segloop-model/1", "state_dict": imported.state_dict, "config": config}, ckpt)
            else:
                assert imported.torchscript is not None
                shutil.copyfile(imported.torchscript, ckpt)
            if imported.new_classes:
                store.set_schema(LabelSchema((*schema.classes, *imported.new_classes)))
            try:
                store.get_model(name)
            except NotFoundError:
                store.create_model(name, model_config)
            version = store.add_model_version(
                name, ckpt, config=config, trained_on=[],
                metrics={"imported_from": source, "val_dice": None}, make_current=make_current,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                ckpt.unlink()
    return version, imported
