"""`ModelSpec`: everything besides the weights that is needed to use a trained network.

It is the ``config`` dict stored with each model version (and inside the checkpoint)::

    {"network": {"arch": "unet", ...}, "classes": [{"value": 0, "name": "background"}, ...],
     "image_channels": 1, "patch_size": [40, 56, 40], "spacing": [1.0, 1.0, 1.0] | None,
     "guidance_sigma": 3.0, "train": {...TrainConfig...}}

The network's input is ``image_channels`` normalised image channels, then one guidance channel
per class (background first), then -- when ``mask_input`` is on -- the one-hot previous mask (one
channel per class; all zero when there is none, as in automatic segmentation), then -- when
``box_input`` is on -- one box channel per foreground class (`segloop.ml.guidance.encode_boxes`;
all zero without a box). Its output is one logit per class, in ``classes`` order.

Imported models (`segloop.ml.bundle`: MONAI bundles, TorchScript files) add two keys:
``"input_kind": "automatic"`` -- the network takes the image channels only (no guidance, so no
clicks: `extra_channels` is 0) -- and ``"intensity"``, the normalisation the model was trained with
(see `normalize_image`); without it segloop's robust z-score is used. segloop's own models are
``"both"`` (automatic and interactive).

``"keep_largest"`` (optional): the structures whose automatic segmentation keeps only its largest
connected component, 0 meaning the foreground as a whole (`segloop.ml.postprocess`); training
decides it from its labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from segloop.ml import bundle_network  # noqa: F401  (registers the "monai" and "torchscript" architectures)
from segloop.ml.guidance import DEFAULT_SIGMA, Sigma
from segloop.ml.networks import build_network, describe_divisor, network_config, size_divisor
from segloop.ml.postprocess import check_rule
from segloop.ml.preprocess import normalize_intensity

INPUT_KINDS = ("both", "automatic")
INTENSITY_KINDS = ("robust-zscore", "zscore", "range", "none")


@dataclass
class ModelSpec:
    network: dict[str, Any]
    class_values: list[int]
    class_names: list[str]
    image_channels: int
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    guidance_sigma: Sigma = DEFAULT_SIGMA  # voxels of the model grid; one per axis (x, y, z) where configured
    mask_input: bool = False
    box_input: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    input_kind: str = "both"
    intensity: dict[str, Any] | None = None
    keep_largest: tuple[int, ...] = ()  # post-processing of automatic results (`segloop.ml.postprocess`)

    @property
    def interactive(self) -> bool:
        """Whether the network takes guidance channels (clicks); imported models do not."""
        return self.input_kind != "automatic"

    @property
    def num_classes(self) -> int:
        return len(self.class_values)

    @property
    def in_channels(self) -> int:
        return self.image_channels + self.extra_channels

    @property
    def extra_channels(self) -> int:
        """Input channels after the image: guidance (+ previous mask) (+ boxes); 0 for automatic-only models."""
        if not self.interactive:
            return 0
        return self.num_classes * (2 if self.mask_input else 1) + (len(self.foreground) if self.box_input else 0)

    @property
    def foreground(self) -> list[int]:
        return [v for v in self.class_values if v != 0]

    def name_of(self, value: int) -> str:
        return self.class_names[self.class_values.index(value)]

    def normalize(self, array: Any) -> Any:
        """The image ``(X, Y, Z[, C])`` as network input ``(C, X, Y, Z)`` float32 (see `normalize_image`)."""
        return normalize_image(array, self.intensity)

    def build(self) -> nn.Module:
        return build_network(self.network, self.in_channels, self.num_classes)

    def to_config(self) -> dict[str, Any]:
        return {
            **self.extra,
            "network": dict(self.network),
            "classes": [{"value": v, "name": n} for v, n in zip(self.class_values, self.class_names, strict=True)],
            "image_channels": self.image_channels,
            "patch_size": list(self.patch_size),
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "guidance_sigma": self.guidance_sigma if isinstance(self.guidance_sigma, (int, float)) else list(self.guidance_sigma),
            "mask_input": self.mask_input,
            **({"box_input": True} if self.box_input else {}),
            "input_kind": self.input_kind,
            **({"intensity": dict(self.intensity)} if self.intensity is not None else {}),
            **({"keep_largest": list(self.keep_largest)} if self.keep_largest else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelSpec:
        """Rebuild from a version config; ValueError when it is not a segloop model config."""
        try:
            classes = config["classes"]
            values = [int(c["value"]) for c in classes]
            names = [str(c["name"]) for c in classes]
            ps = [int(v) for v in config["patch_size"]]
            sp = config.get("spacing")
            spec = cls(
                network=network_config(config["network"]),
                class_values=values,
                class_names=names,
                image_channels=int(config["image_channels"]),
                patch_size=(ps[0], ps[1], ps[2]),
                spacing=(float(sp[0]), float(sp[1]), float(sp[2])) if sp is not None else None,
                guidance_sigma=parse_sigma(config.get("guidance_sigma", DEFAULT_SIGMA)),
                mask_input=bool(config.get("mask_input", False)),
                box_input=bool(config.get("box_input", False)),
                extra={k: v for k, v in config.items() if k not in _OWN_KEYS},
                input_kind=str(config.get("input_kind", "both")),
                intensity=check_intensity(config.get("intensity")),
                keep_largest=check_rule(config.get("keep_largest", []), [v for v in values if v != 0]),
            )
            if spec.input_kind not in INPUT_KINDS:
                raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {spec.input_kind!r}")
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a segloop model config (missing or bad {exc})") from exc
        return spec

    def check_patch(self) -> None:
        div = size_divisor(self.network)
        if any(p % d or p <= 0 for p, d in zip(self.patch_size, div, strict=True)):
            raise ValueError(f"patch_size {list(self.patch_size)} must be positive multiples of {describe_divisor(div)} "
                             "for this network")


def parse_sigma(value: Any) -> Sigma:
    """A config's ``guidance_sigma``: one positive number, or three (x, y, z)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise ValueError(f"guidance_sigma must be one positive number or three, got {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"guidance_sigma must be positive, got {value!r}")
    return float(value)


_OWN_KEYS = {
    "network", "classes", "image_channels", "patch_size", "spacing", "guidance_sigma", "mask_input", "box_input",
    "input_kind", "intensity", "keep_largest",
}


def check_intensity(intensity: Any) -> dict[str, Any] | None:
    """Validate an ``intensity`` config (None: segloop's robust z-score); ValueError naming the problem.

    Forms: ``{"kind": "robust-zscore"}`` (segloop's own: clip to [p0.5, p99.5], z-score);
    ``{"kind": "zscore", "nonzero": bool}`` (MONAI ``NormalizeIntensity``, per channel; ``nonzero``:
    statistics of the non-zero voxels, zeros kept); ``{"kind": "range", "a_min", "a_max", "b_min",
    "b_max", "clip": bool}`` (MONAI ``ScaleIntensityRange``: a linear map of [a_min, a_max] onto
    [b_min, b_max], e.g. a CT window); ``{"kind": "none"}`` (raw values).
    """
    if intensity is None:
        return None
    if not isinstance(intensity, dict):
        raise ValueError(f"intensity must be an object with a 'kind', got {intensity!r}")
    kind = intensity.get("kind")
    if kind not in INTENSITY_KINDS:
        raise ValueError(f"intensity kind must be one of {', '.join(INTENSITY_KINDS)}, got {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    if kind == "range":
        for key in ("a_min", "a_max", "b_min", "b_max"):
            value = intensity.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"intensity 'range' needs a number {key!r}, got {value!r}")
            out[key] = float(value)
        if out["a_max"] == out["a_min"]:
            raise ValueError("intensity 'range' needs a_max != a_min")
        out["clip"] = bool(intensity.get("clip", False))
    elif kind == "zscore":
        out["nonzero"] = bool(intensity.get("nonzero", False))
    unknown = sorted(set(intensity) - set(out) - {"clip", "nonzero"})
    if unknown:
        raise ValueError(f"unknown intensity key(s) for kind {kind!r}: {', '.join(unknown)}")
    return out


def normalize_image(array: Any, intensity: dict[str, Any] | None) -> np.ndarray:
    """Image ``(X, Y, Z)`` or ``(X, Y, Z, C)`` -> float32 ``(C, X, Y, Z)`` normalised as ``intensity`` says."""
    if intensity is None or intensity["kind"] == "robust-zscore":
        return normalize_intensity(array)
    data = np.asarray(array)
    if data.ndim == 3:
        data = data[..., None]
    out = np.moveaxis(data, -1, 0).astype(np.float32)  # a copy
    kind = intensity["kind"]
    for c in range(out.shape[0]):
        x = out[c]
        if kind == "range":
            lo, hi, b_lo, b_hi = (intensity[k] for k in ("a_min", "a_max", "b_min", "b_max"))
            x[...] = (x - lo) / (hi - lo) * (b_hi - b_lo) + b_lo
            if intensity.get("clip"):
                np.clip(x, min(b_lo, b_hi), max(b_lo, b_hi), out=x)
        elif kind == "zscore":
            sel = x != 0 if intensity.get("nonzero") else np.ones(x.shape, dtype=bool)
            if sel.any():
                mean, std = float(x[sel].mean()), float(x[sel].std())
                x[sel] = (x[sel] - mean) / (std if std > 1e-8 else 1.0)
    return np.ascontiguousarray(out)


def load_checkpoint(path: Any, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a segloop checkpoint (a dict with ``state_dict`` and ``config``) without unpickling code."""
    import zipfile

    with contextlib.suppress(OSError, zipfile.BadZipFile), zipfile.ZipFile(path) as z:
        if any(n.endswith("/constants.pkl") or n.split("/", 2)[1:2] == ["code"] for n in z.namelist()):
            raise ValueError(
                f"{path}: a TorchScript model (imported): it has no network definition, so it cannot be "
                "trained or fine-tuned; it can only segment"
            )
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a segloop checkpoint")
    return ckpt
