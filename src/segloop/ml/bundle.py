"""Reading a MONAI bundle (a folder; zips are unpacked by `segloop.ml.model_import`) as an `ImportedModel`.

Layout (MONAI bundle specification)::

    configs/metadata.json     network_data_format: inputs.<first>.num_channels,
                              outputs.<first>.num_channels and channel_def (class names)
    configs/inference.json    network_def (a monai.networks.nets class), preprocessing, inferer
    (or .yaml)
    models/model.pt           the weights (a state dict)   -> fine-tunable
    models/model.ts           or a TorchScript export      -> inference only

The configs are read with `monai.bundle.ConfigParser` (ids like ``network_def::channels``,
references ``@id``). Nothing in them is *run*: ``$`` expressions are accepted only when they
are Python literals, and only classes of ``monai.networks.nets`` are built. What is read:

- network: ``network_def``'s class and keyword arguments (``spatial_dims`` must be 3);
- classes: metadata's output ``channel_def``, mapped onto the label schema by name;
- spacing: ``Spacingd``'s ``pixdim``; intensity: ``ScaleIntensityRanged`` (-> ``range``) or
  ``NormalizeIntensityd`` (-> ``zscore``); any other transform that changes intensities makes the
  normalisation unreadable, and the model JSON must give it; geometric transforms other than these
  are ignored with a note (``Orientationd`` too: images are fed in their stored voxel order);
- patch size: the inferer's ``roi_size``, else the input's ``spatial_shape``;
- outputs: a ``sigmoid`` activation (multi-label outputs) is refused: a segloop label map has one
  class per voxel.

The model JSON (`segloop.ml.imported`) overrides any of classes, image_channels, patch_size,
spacing and intensity.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import torch

from segloop.ml.bundle_network import monai_network_class
from segloop.ml.imported import (
    ImportedModel,
    ModelImportError,
    check_forward,
    intensity_of,
    map_classes,
    triple,
)
from segloop.ml.modelspec import ModelSpec
from segloop.store.records import LabelSchema

_MISSING = object()
# Pre-processing that changes neither intensities nor the grid the network sees.
_NEUTRAL = {
    "LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType", "Identity",
    "CopyItems", "ToDevice", "ToMetaTensor", "EnsureSameShape", "SqueezeDim", "ToNumpy", "DeleteItems",
    "SelectItems", "DivisiblePad", "SpatialPad", "FromMetaTensor",
}
_INTENSITY_WORDS = re.compile(r"Intensity|Normali[sz]e|Scale|Clip|Histogram|Gamma|Shift|Std|Lambda|Threshold")


def find_bundle_root(folder: Path) -> Path | None:
    """``folder`` or its only sub-folder when it holds ``configs/metadata.json`` (zips often wrap one)."""
    if (folder / "configs" / "metadata.json").is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    if len(subs) == 1 and (subs[0] / "configs" / "metadata.json").is_file():
        return subs[0]
    return None


class _Config:
    """A bundle's configs through `ConfigParser`, with references resolved to plain values."""

    def __init__(self, root: Path) -> None:
        from monai.bundle import ConfigParser

        self.root = root
        self.meta_file = root / "configs" / "metadata.json"
        candidates = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ModelImportError(f"{root}: no configs/inference.json (or .yaml): not a MONAI bundle")
        self.file = found[0]
        self.parser = ConfigParser()
        try:
            self.parser.read_meta(str(self.meta_file))
            self.parser.read_config(str(self.file))
        except Exception as exc:  # noqa: BLE001 -- json / yaml errors of many kinds
            raise ModelImportError(f"{root}: cannot read the bundle configs ({exc})") from exc
        self.name = f"configs/{self.file.name}"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        value = self.parser.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                where = "configs/metadata.json" if key.startswith("_meta_") else self.name
                raise ModelImportError(f"{where}: missing key {key.removeprefix('_meta_::')!r}")
            return default
        return self.literal(value, key)

    def literal(self, value: Any, where: str, depth: int = 0) -> Any:
        """``value`` with ``@id`` references followed and literal ``$`` expressions evaluated."""
        if depth > 32:
            raise ModelImportError(f"{self.name}: {where}: references nest too deep (a cycle?)")
        if isinstance(value, str):
            if value.startswith("@"):
                from monai.bundle import ConfigParser

                ref = ConfigParser.resolve_relative_ids(where, value)[1:]
                target = self.parser.get(ref, _MISSING)
                if target is _MISSING:
                    raise ModelImportError(f"{self.name}: {where}: reference {value!r} names no key")
                return self.literal(target, ref, depth + 1)
            if value.startswith("$"):
                try:
                    return ast.literal_eval(value[1:].strip())
                except (ValueError, SyntaxError) as exc:
                    raise ModelImportError(
                        f"{self.name}: {where}: expression {value!r} cannot be read without running code; "
                        "give the value in the model JSON (--config)"
                    ) from exc
            if value.startswith("%"):
                raise ModelImportError(f"{self.name}: {where}: macro {value!r} (another file's content) is not supported")
            return value
        if isinstance(value, list):
            return [self.literal(v, f"{where}::{i}", depth) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.literal(v, f"{where}::{k}", depth) for k, v in value.items()}
        return value


def _target_name(transform: dict[str, Any]) -> str:
    target = str(transform.get("_target_", ""))
    return target.rsplit(".", 1)[-1]


def _divisor(target: str, args: dict[str, Any], patch: tuple[int, int, int]) -> int:
    """Spatial sizes must be multiples of this: the product of the network's downsampling strides."""

    def prod_strides(strides: Any) -> int:
        total = 1
        for s in strides:
            s = max(s) if isinstance(s, (list, tuple)) else s
            total *= int(s)
        return total

    try:
        if target in ("UNet", "AttentionUnet") and "strides" in args:
            return prod_strides(args["strides"])
        if target == "DynUNet" and "strides" in args:
            return prod_strides(args["strides"])
        if target == "SegResNet":
            return int(2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1))
        if target in ("BasicUNet", "BasicUNetPlusPlus"):
            return 16
    except (TypeError, ValueError):
        pass
    # Unknown network: the largest power of two (up to 32) that divides the patch it was run on.
    div = 32
    while div > 1 and any(p % div for p in patch):
        div //= 2
    return div


def _preprocessing(cfg: _Config, notes: list[str]) -> tuple[tuple[float, float, float] | None, dict[str, Any] | None, bool]:
    """``(spacing, intensity, intensity_readable)`` from the pre-processing transforms."""
    pre = cfg.get("preprocessing", None)
    if pre is None:
        notes.append(f"{cfg.name} has no preprocessing: the image is used on its own grid, raw intensities")
        return None, {"kind": "none"}, True
    transforms = pre.get("transforms", []) if isinstance(pre, dict) else pre
    if not isinstance(transforms, list):
        raise ModelImportError(f"{cfg.name}: preprocessing::transforms must be a list")
    spacing: tuple[float, float, float] | None = None
    intensity: dict[str, Any] | None = {"kind": "none"}
    seen: list[str] = []
    readable = True
    for i, t in enumerate(transforms):
        if not isinstance(t, dict) or t.get("_disabled_") in (True, "true", "True"):
            continue
        name = _target_name(t)
        base = name[:-1] if name.endswith("d") else name
        where = f"preprocessing::transforms::{i} ({name})"
        if base in _NEUTRAL:
            continue
        if base == "Spacing":
            pixdim = t.get("pixdim")
            if isinstance(pixdim, (int, float)) and not isinstance(pixdim, bool):
                pixdim = [pixdim] * 3
            try:
                spacing = triple(pixdim, f"{cfg.name}: {where}: pixdim")
            except ModelImportError as exc:
                raise ModelImportError(f"{exc} (give spacing in the model JSON)") from None
        elif base == "Orientation":
            notes.append(
                f"the bundle reorients images to {t.get('axcodes')!r}; segloop feeds them in their stored voxel "
                "order, so images stored in another orientation may segment poorly"
            )
        elif base == "ScaleIntensityRange":
            seen.append(name)
            b_min, b_max = t.get("b_min"), t.get("b_max")
            if b_min is None or b_max is None:
                readable = False
            else:
                intensity = intensity_of(
                    {"kind": "range", "a_min": t.get("a_min"), "a_max": t.get("a_max"), "b_min": b_min,
                     "b_max": b_max, "clip": bool(t.get("clip", False))},
                    f"{cfg.name}: {where}",
                )
        elif base == "NormalizeIntensity":
            seen.append(name)
            if t.get("subtrahend") is not None or t.get("divisor") is not None:
                readable = False
            else:
                intensity = {"kind": "zscore", "nonzero": bool(t.get("nonzero", False))}
                if not t.get("channel_wise", False):
                    notes.append(f"{where}: channel_wise is off; segloop normalises each channel on its own")
        elif _INTENSITY_WORDS.search(name):
            seen.append(name)
            readable = False
        else:
            notes.append(f"{where} is not reproduced by segloop (ignored)")
    if len(seen) > 1:
        readable = False
    if not readable:
        intensity = None
        notes.append(f"intensity pre-processing {', '.join(seen)} is not one segloop can reproduce")
    return spacing, intensity, readable


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- pickle / zip errors, or code in the file (refused)
        raise ModelImportError(f"{path.name}: cannot read the weights as a plain state dict ({exc})") from exc
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "network", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelImportError(f"models/{path.name}: not a state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def read_bundle(
    root: Path, schema: LabelSchema, model_json: dict[str, Any], *, json_name: str = "model JSON", add_classes: bool = False
) -> ImportedModel:
    """Check the bundle at ``root`` against ``schema``; `ModelImportError` names the first problem."""
    cfg = _Config(root)
    notes: list[str] = []
    meta_name = "configs/metadata.json"
    fmt = cfg.get("_meta_::network_data_format")
    if not isinstance(fmt, dict):
        raise ModelImportError(f"{meta_name}: network_data_format must be an object")
    inputs, outputs = cfg.get("_meta_::network_data_format::inputs"), cfg.get("_meta_::network_data_format::outputs")
    if not isinstance(inputs, dict) or not inputs or not isinstance(outputs, dict) or not outputs:
        raise ModelImportError(f"{meta_name}: network_data_format needs non-empty 'inputs' and 'outputs'")
    in_key, out_key = next(iter(inputs)), next(iter(outputs))
    image_in, pred_out = inputs[in_key], outputs[out_key]
    if not isinstance(image_in, dict) or not isinstance(pred_out, dict):
        raise ModelImportError(f"{meta_name}: network_data_format inputs/outputs entries must be objects")
    if pred_out.get("format") not in (None, "segmentation"):
        raise ModelImportError(f"{meta_name}: output {out_key!r} is {pred_out.get('format')!r}, not a segmentation")

    # Network.
    net_def = cfg.get("network_def")
    if not isinstance(net_def, dict) or "_target_" not in net_def:
        raise ModelImportError(f"{cfg.name}: network_def must be an object with a '_target_'")
    target = str(net_def["_target_"])
    args = {k: v for k, v in net_def.items() if not k.startswith("_")}
    dims = args.get("spatial_dims", args.get("dimensions", 3))
    if dims != 3:
        raise ModelImportError(f"{cfg.name}: network_def::spatial_dims is {dims!r}; segloop segments 3-D volumes")
    net_in, net_out = args.get("in_channels"), args.get("out_channels")
    for key, v in (("in_channels", net_in), ("out_channels", net_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelImportError(f"{cfg.name}: network_def::{key} must be a positive integer, got {v!r}")
    assert isinstance(net_in, int) and isinstance(net_out, int)
    meta_in = image_in.get("num_channels")
    if meta_in is not None and meta_in != net_in:
        raise ModelImportError(
            f"input channel count does not match: {meta_name} says input {in_key!r} has {meta_in} channel(s), "
            f"{cfg.name} network_def::in_channels is {net_in} (bundles with guidance inputs are not supported)"
        )
    if len(inputs) > 1:
        raise ModelImportError(f"{meta_name}: the network takes {len(inputs)} inputs ({', '.join(inputs)}); segloop feeds one image")
    channels = model_json.get("image_channels", net_in)
    if channels != net_in:
        raise ModelImportError(
            f"input channel count does not match: {json_name} image_channels is {channels}, "
            f"network_def::in_channels is {net_in}"
        )
    meta_out = pred_out.get("num_channels")
    if meta_out is not None and meta_out != net_out:
        raise ModelImportError(
            f"output channel count does not match: {meta_name} says output {out_key!r} has {meta_out} channel(s), "
            f"network_def::out_channels is {net_out}"
        )

    # Classes.
    if "classes" in model_json:
        class_list, where = model_json["classes"], f"{json_name}: classes"
    else:
        channel_def = pred_out.get("channel_def")
        if not isinstance(channel_def, dict) or not channel_def:
            raise ModelImportError(
                f"{meta_name}: missing key 'network_data_format::outputs::{out_key}::channel_def' (the class names); "
                "give classes in the model JSON (--config)"
            )
        try:
            order = sorted(channel_def, key=lambda k: int(k))
        except ValueError:
            raise ModelImportError(f"{meta_name}: channel_def keys must be channel numbers, got {list(channel_def)}") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise ModelImportError(f"{meta_name}: channel_def must name channels 0..{len(order) - 1}, got {order}")
        class_list, where = [channel_def[k] for k in order], f"{meta_name}: channel_def"
    if len(class_list) != net_out:
        raise ModelImportError(f"{where} lists {len(class_list)} classes, the network has {net_out} output channels")
    values, names, new = map_classes(class_list, schema, where, add_classes)

    # Outputs: one class per voxel.
    post = cfg.get("postprocessing", None)
    for i, t in enumerate((post.get("transforms", []) if isinstance(post, dict) else []) or []):
        if isinstance(t, dict) and _target_name(t).startswith("Activations") and t.get("sigmoid") in (True, "true"):
            raise ModelImportError(
                f"{cfg.name}: postprocessing::transforms::{i} applies a sigmoid (multi-label outputs); "
                "segloop's label maps hold one class per voxel (softmax)"
            )

    # Pre-processing, patch.
    spacing, intensity, readable = _preprocessing(cfg, notes)
    if "spacing" in model_json:
        sp = model_json["spacing"]
        spacing = triple(sp, f"{json_name}: spacing") if sp is not None else None
    if "intensity" in model_json:
        intensity = intensity_of(model_json["intensity"], f"{json_name}: intensity")
    elif not readable:
        raise ModelImportError(
            f"{cfg.name}: the intensity pre-processing cannot be read reliably; give it in the model JSON (--config), "
            'e.g. {"intensity": {"kind": "range", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": true}}'
        )
    if "patch_size" in model_json:
        patch = triple(model_json["patch_size"], f"{json_name}: patch_size", int)
    else:
        roi = (cfg.get("inferer", None) or {}).get("roi_size") if isinstance(cfg.get("inferer", None), dict) else None
        shape = image_in.get("spatial_shape")
        source = roi if roi is not None else shape
        try:
            patch = triple(source, "patch")
        except ModelImportError:
            raise ModelImportError(
                f"{cfg.name}: no readable patch size (inferer::roi_size {roi!r}, {meta_name} spatial_shape {shape!r}); "
                "give patch_size in the model JSON"
            ) from None
        patch = (int(patch[0]), int(patch[1]), int(patch[2]))

    # Weights: a state dict for a MONAI network (fine-tunable), else the TorchScript export.
    pt, ts = root / "models" / "model.pt", root / "models" / "model.ts"
    what = f"{root.name}/models/"
    try:
        monai_network_class(target)
        buildable = True
    except ValueError as exc:
        buildable = False
        reason = str(exc)
    if pt.is_file() and buildable:
        name = monai_network_class(target).__name__
        dropout = args.get("dropout")
        network = {
            "arch": "monai",
            "target": name,
            "args": {k: v for k, v in args.items() if k not in ("in_channels", "out_channels")},
            "divisor": _divisor(name, args, patch),
            "dropout": float(dropout) if isinstance(dropout, (int, float)) and not isinstance(dropout, bool) else 0.0,
        }
        spec = ModelSpec(network, values, names, net_in, patch, spacing, input_kind="automatic", intensity=intensity)
        if any(p % network["divisor"] for p in patch):
            raise ModelImportError(f"patch size {list(patch)} is not a multiple of {network['divisor']}, the network's downsampling")
        try:
            net = spec.build()
        except ValueError as exc:
            raise ModelImportError(f"{cfg.name}: network_def: {exc}") from exc
        state = _state_dict(pt)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines()[1:4] if ln.strip()]
            raise ModelImportError(
                f"{what}model.pt does not fit {cfg.name} network_def: {' '.join(lines) or str(exc)}"
            ) from exc
        check_forward(net, spec, f"{what}model.pt")
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return ImportedModel(spec, "monai-bundle", state_dict=state, new_classes=new, notes=notes)
    if ts.is_file():
        spec = ModelSpec({"arch": "torchscript", "divisor": 1, "dropout": 0.0}, values, names, net_in, patch, spacing,
                         input_kind="automatic", intensity=intensity)
        try:
            net = torch.jit.load(str(ts), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelImportError(f"{what}model.ts: not a TorchScript archive ({exc})") from exc
        check_forward(net, spec, f"{what}model.ts")
        why = "no models/model.pt" if buildable else reason
        notes.append(f"imported from models/model.ts ({why}): it infers but cannot be fine-tuned")
        return ImportedModel(spec, "monai-bundle", torchscript=ts, new_classes=new, notes=notes)
    if pt.is_file():
        raise ModelImportError(f"{cfg.name}: {reason}; and there is no models/model.ts to use instead")
    raise ModelImportError(f"{root.name}: missing models/model.pt (or models/model.ts)")
