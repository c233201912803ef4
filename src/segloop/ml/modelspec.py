"""`ModelSpec`: everything besides the weights that is needed to use a trained network.

It is the ``config`` dict stored with each model version (and inside the checkpoint)::

    {"network": {"arch": "unet", ...}, "classes": [{"value": 0, "name": "background"}, ...],
     "image_channels": 1, "patch_size": [40, 56, 40], "spacing": [1.0, 1.0, 1.0] | None,
     "guidance_sigma": 3.0, "train": {...TrainConfig...}}

The network's input is ``image_channels`` normalised image channels, then one guidance channel
per class (background first), then -- when ``mask_input`` is on -- the one-hot previous mask (one
channel per class; all zero when there is none, as in automatic segmentation). Its output is one
logit per class, in ``classes`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segloop.ml.guidance import DEFAULT_SIGMA
from segloop.ml.networks import build_network, network_config, size_divisor


@dataclass
class ModelSpec:
    network: dict[str, Any]
    class_values: list[int]
    class_names: list[str]
    image_channels: int
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    guidance_sigma: float = DEFAULT_SIGMA
    mask_input: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_values)

    @property
    def in_channels(self) -> int:
        return self.image_channels + self.extra_channels

    @property
    def extra_channels(self) -> int:
        """Input channels after the image: guidance (+ previous mask)."""
        return self.num_classes * (2 if self.mask_input else 1)

    @property
    def foreground(self) -> list[int]:
        return [v for v in self.class_values if v != 0]

    def name_of(self, value: int) -> str:
        return self.class_names[self.class_values.index(value)]

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
            "guidance_sigma": self.guidance_sigma,
            "mask_input": self.mask_input,
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
                guidance_sigma=float(config.get("guidance_sigma", DEFAULT_SIGMA)),
                mask_input=bool(config.get("mask_input", False)),
                extra={k: v for k, v in config.items() if k not in _OWN_KEYS},
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a segloop model config (missing or bad {exc})") from exc
        return spec

    def check_patch(self) -> None:
        div = size_divisor(self.network)
        bad = [p for p in self.patch_size if p % div or p <= 0]
        if bad:
            raise ValueError(f"patch_size {list(self.patch_size)} must be positive multiples of {div} for this network")


_OWN_KEYS = {"network", "classes", "image_channels", "patch_size", "spacing", "guidance_sigma", "mask_input"}


def load_checkpoint(path: Any, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a segloop checkpoint (a dict with ``state_dict`` and ``config``) without unpickling code."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a segloop checkpoint")
    return ckpt
