"""What an imported model must say about itself, and the checks shared by every kind of import.

A model users bring (a MONAI bundle, `segloop.ml.bundle`; a TorchScript file, `read_torchscript`)
becomes a `ModelSpec` with ``input_kind = "automatic"`` (its input is the image channels only: no
guidance, so no clicks) and the intensity normalisation and spacing it was trained with. Its output
channels are mapped onto the store's label schema by class name.

The *model JSON* (required for TorchScript, optional overrides for a bundle)::

    {"classes": ["background", "Anterior", "Posterior"],     # output channel order
     "image_channels": 1, "patch_size": [64, 64, 64], "spacing": [1.0, 1.0, 1.0],
     "intensity": {"kind": "range", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": true}}

``classes`` entries are names, or objects ``{"name": ..., "value": ...}``; channel 0 must be the
background. ``spacing`` null: the image is used on its own grid. ``intensity``: see
`segloop.ml.modelspec.check_intensity`. Every problem is a `ModelImportError` that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segloop.ml.modelspec import ModelSpec, check_intensity
from segloop.store.records import LabelClass, LabelSchema

MODEL_JSON_KEYS = ("classes", "image_channels", "patch_size", "spacing", "intensity")
# Colours for classes added to the schema by an import (``add_classes``).
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


class ModelImportError(ValueError):
    """An imported model that cannot be used as it is; the message says what and where."""


@dataclass
class ImportedModel:
    """A checked model, ready to become a version.

    Attributes:
        spec: the model's `ModelSpec` (``input_kind`` automatic).
        kind: ``"monai-bundle"`` or ``"torchscript"``.
        state_dict: the weights (MONAI networks: a segloop checkpoint is written from them).
        torchscript: the TorchScript file (copied as the version's checkpoint).
        new_classes: schema classes the import adds (only with ``add_classes``).
        notes: things the user should know (ignored pre-processing, orientation...).
    """

    spec: ModelSpec
    kind: str
    state_dict: dict[str, torch.Tensor] | None = None
    torchscript: Path | None = None
    new_classes: list[LabelClass] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fine_tunable(self) -> bool:
        return self.state_dict is not None


def read_model_json(path: Path | None) -> dict[str, Any]:
    """The model JSON at ``path`` ({} for None), with unknown keys refused."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelImportError(f"{path}: cannot read the model JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelImportError(f"{path}: the model JSON must be an object with {', '.join(MODEL_JSON_KEYS)}")
    unknown = sorted(set(data) - set(MODEL_JSON_KEYS))
    if unknown:
        raise ModelImportError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(MODEL_JSON_KEYS)})")
    return data


def triple(value: Any, what: str, kind: type = float) -> tuple[Any, Any, Any]:
    """Three positive numbers (ints for ``kind=int``); ModelImportError otherwise."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0 for v in value
    )
    if ok and kind is int:
        ok = all(float(v).is_integer() for v in value)
    if not ok:
        raise ModelImportError(f"{what} must be three positive {'integers' if kind is int else 'numbers'}, got {value!r}")
    return (kind(value[0]), kind(value[1]), kind(value[2]))


def intensity_of(value: Any, what: str) -> dict[str, Any] | None:
    try:
        return check_intensity(value)
    except ValueError as exc:
        raise ModelImportError(f"{what}: {exc}") from exc


def map_classes(
    names: list[Any], schema: LabelSchema, what: str, add_classes: bool = False
) -> tuple[list[int], list[str], list[LabelClass]]:
    """Output channels (names, or ``{"name", "value"}`` objects) -> schema class values.

    Returns:
        ``(values, names, new_classes)``: the class value of each channel, its schema name, and
        the classes to add to the schema (``add_classes``; otherwise a name the schema lacks is an error).
    """
    if not isinstance(names, list) or len(names) < 2:
        raise ModelImportError(f"{what}: need a list of at least 2 classes (background first), got {names!r}")
    values: list[int] = []
    out_names: list[str] = []
    new: list[LabelClass] = []
    used = {c.value for c in schema.classes}
    for channel, entry in enumerate(names):
        wanted: int | None = None
        if isinstance(entry, dict):
            name, wanted = entry.get("name"), entry.get("value")
            if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int)):
                raise ModelImportError(f"{what}: class value of channel {channel} must be an integer, got {wanted!r}")
        else:
            name = entry
        if not isinstance(name, str) or not name.strip():
            raise ModelImportError(f"{what}: channel {channel} has no class name ({entry!r})")
        name = name.strip()
        if channel == 0:
            background = next((c.name for c in schema.classes if c.value == 0), "background")
            if name.lower() not in ("background", background.lower()) or wanted not in (None, 0):
                raise ModelImportError(f"{what}: channel 0 must be the background, got class {name!r}")
            values.append(0)
            out_names.append(background)
            continue
        cls = next((c for c in schema.classes if c.value != 0 and c.name.lower() == name.lower()), None)
        if cls is None:
            if not add_classes:
                known = ", ".join(f"{c.name!r} ({c.value})" for c in schema.foreground) or "none"
                raise ModelImportError(
                    f"{what}: class {name!r} (output channel {channel}) is not in the label schema "
                    f"(foreground classes: {known}); rename it in the model JSON's classes, or use --add-classes"
                )
            value = wanted if wanted is not None else max(used | {0}) + 1
            if value in used or not 0 < value <= 255:
                raise ModelImportError(f"{what}: cannot add class {name!r} with value {value} (in use or out of 1-255)")
            cls = LabelClass(value, name, _PALETTE[len(new) % len(_PALETTE)])
            new.append(cls)
            used.add(value)
        if wanted is not None and wanted != cls.value:
            raise ModelImportError(f"{what}: class {name!r} has value {cls.value} in the label schema, not {wanted}")
        if cls.value in values:
            raise ModelImportError(f"{what}: two output channels map to class {cls.name!r}")
        values.append(cls.value)
        out_names.append(cls.name)
    return values, out_names, new


def check_forward(net: nn.Module, spec: ModelSpec, what: str) -> None:
    """Run the network once on zeros of one patch: the input channel count must be accepted and
    the output must have one channel per class on the patch's grid."""
    x = torch.zeros((1, spec.in_channels, *spec.patch_size))
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except Exception as exc:  # noqa: BLE001 -- any failure of a foreign network is the user's to see
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(
            f"{what}: the network fails on an input of {spec.in_channels} channel(s) x {list(spec.patch_size)} "
            f"({first}); check image_channels and patch_size"
        ) from exc
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, dict):
        raise ModelImportError(f"{what}: the network returns a dict; segloop needs one tensor of class logits")
    if not isinstance(out, torch.Tensor) or out.ndim != 5:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelImportError(f"{what}: the network's output {shape} is not (batch, classes, X, Y, Z)")
    if out.shape[1] != spec.num_classes:
        raise ModelImportError(
            f"{what}: the network has {out.shape[1]} output channel(s), the class list has {spec.num_classes}"
        )
    if tuple(out.shape[2:]) != tuple(spec.patch_size):
        raise ModelImportError(
            f"{what}: the network maps a {list(spec.patch_size)} patch to {list(out.shape[2:])}; "
            "segloop needs the output on the input's grid"
        )


def read_torchscript(
    path: Path, model_json: dict[str, Any], schema: LabelSchema, *, json_name: str, add_classes: bool = False
) -> ImportedModel:
    """A TorchScript file and its model JSON (``classes`` and ``patch_size`` required)."""
    what = str(path)
    for key in ("classes", "patch_size"):
        if key not in model_json:
            raise ModelImportError(f"{json_name}: missing key {key!r} (a TorchScript model needs {key} in its JSON)")
    values, names, new = map_classes(model_json["classes"], schema, f"{json_name}: classes", add_classes)
    channels = model_json.get("image_channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ModelImportError(f"{json_name}: image_channels must be a positive integer, got {channels!r}")
    patch = triple(model_json["patch_size"], f"{json_name}: patch_size", int)
    sp = model_json.get("spacing")
    spacing = triple(sp, f"{json_name}: spacing") if sp is not None else None
    intensity = intensity_of(model_json.get("intensity"), f"{json_name}: intensity")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError / ValueError / zip errors
        raise ModelImportError(f"{what}: not a TorchScript archive ({str(exc).strip().splitlines()[0] if str(exc) else exc!r})") from exc
    spec = ModelSpec(
        {"arch": "torchscript", "divisor": 1, "dropout": 0.0}, values, names, channels, patch, spacing,
        input_kind="automatic", intensity=intensity,
    )
    check_forward(net, spec, what)
    notes = []
    if intensity is None:
        notes.append("no intensity in the model JSON: images get segloop's robust z-score")
    return ImportedModel(spec, "torchscript", torchscript=path, new_classes=new, notes=notes)
