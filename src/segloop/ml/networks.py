"""Registry of named 3-D segmentation architectures, each built from a plain (JSON) config dict.

The config dict is stored with every model version, so a checkpoint can always be rebuilt::

    {"arch": "unet", "channels": [16, 32, 64, 128], "num_res_units": 2, "dropout": 0.1}

``in_channels`` and ``out_channels`` are not part of it: they follow from the task (image
channels + one guidance channel per class; one output per class) and are passed by the caller.
``depth`` (number of resolution levels) is derived from ``channels`` where it is not a parameter
of the architecture. ``dropout`` is kept in every architecture so that MC dropout works.

Architectures: ``unet`` (MONAI `UNet`), ``dynunet`` (MONAI `DynUNet`, nnU-Net style),
``segresnet`` (MONAI `SegResNet`). Every one downsamples by 2 per level, so spatial input sizes
must be multiples of `size_divisor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_Builder = Callable[[dict[str, Any], int, int], nn.Module]
_REGISTRY: dict[str, tuple[_Builder, dict[str, Any]]] = {}


def register(name: str, defaults: dict[str, Any]) -> Callable[[_Builder], _Builder]:
    """Decorator adding an architecture builder ``f(config, in_channels, out_channels)`` under ``name``."""

    def deco(fn: _Builder) -> _Builder:
        _REGISTRY[name] = (fn, dict(defaults))
        return fn

    return deco


def architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def network_config(config: dict[str, Any] | None = None, arch: str | None = None) -> dict[str, Any]:
    """A complete network config: the architecture's defaults overridden by ``config``.

    Raises:
        ValueError: unknown architecture or unknown / invalid parameter.
    """
    cfg = dict(config or {})
    name = str(arch or cfg.pop("arch", None) or "unet").lower()
    cfg.pop("arch", None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(architectures())})")
    defaults = _REGISTRY[name][1]
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) for architecture {name!r}: {', '.join(unknown)} (known: {', '.join(sorted(defaults))})")
    full = {"arch": name, **defaults, **cfg}
    channels = full.get("channels")
    if channels is not None:
        if not isinstance(channels, (list, tuple)) or len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be a list of at least 2 positive integers, got {channels!r}")
        full["channels"] = [int(c) for c in channels]
    dropout = float(full.get("dropout", 0.0) or 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    full["dropout"] = dropout
    return full


def size_divisor(config: dict[str, Any]) -> int:
    """Spatial input sizes must be multiples of this (2 ** number of downsamplings)."""
    cfg = network_config(config)
    if "divisor" in cfg:  # imported architectures (segloop.ml.bundle_network) state it
        return int(cfg["divisor"])
    if cfg["arch"] == "segresnet":
        return int(2 ** (len(cfg["blocks_down"]) - 1))
    return int(2 ** (len(cfg["channels"]) - 1))


def build_network(config: dict[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """Instantiate the network described by ``config`` (see `network_config`)."""
    cfg = network_config(config)
    builder = _REGISTRY[cfg["arch"]][0]
    return builder(cfg, int(in_channels), int(out_channels))


@register("unet", {"channels": [16, 32, 64, 128], "num_res_units": 2, "dropout": 0.1, "norm": "instance"})
def _unet(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import UNet

    ch = cfg["channels"]
    return UNet(
        spatial_dims=3,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=tuple(ch),
        strides=tuple([2] * (len(ch) - 1)),
        num_res_units=int(cfg["num_res_units"]),
        dropout=cfg["dropout"],
        norm=cfg["norm"],
    )


@register("dynunet", {"channels": [16, 32, 64, 128], "dropout": 0.1, "res_block": True})
def _dynunet(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    ch = cfg["channels"]
    n = len(ch)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=[3] * n,
        strides=[1] + [2] * (n - 1),
        upsample_kernel_size=[2] * (n - 1),
        filters=list(ch),
        dropout=cfg["dropout"] or None,
        res_block=bool(cfg["res_block"]),
    )


@register("segresnet", {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout": 0.1})
def _segresnet(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    down = tuple(int(b) for b in cfg["blocks_down"])
    up = tuple(int(b) for b in cfg["blocks_up"])
    if len(up) != len(down) - 1:
        raise ValueError("segresnet: blocks_up must have one entry fewer than blocks_down")
    return SegResNet(
        spatial_dims=3,
        init_filters=int(cfg["init_filters"]),
        in_channels=in_ch,
        out_channels=out_ch,
        dropout_prob=cfg["dropout"] or None,
        blocks_down=down,
        blocks_up=up,
    )
