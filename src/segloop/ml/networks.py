"""Registry of named 3-D segmentation architectures, each built from a plain (JSON) config dict.

The config dict is stored with every model version, so a checkpoint can always be rebuilt::

    {"arch": "unet", "channels": [16, 32, 64, 128], "num_res_units": 2, "dropout": 0.1}

``in_channels`` and ``out_channels`` are not part of it: they follow from the task (image
channels + one guidance channel per class; one output per class) and are passed by the caller.
``depth`` (number of resolution levels) is derived from ``channels`` where it is not a parameter
of the architecture. ``dropout`` is kept in every architecture so that MC dropout works.

Architectures: ``unet`` (MONAI `UNet`), ``dynunet`` (MONAI `DynUNet`, nnU-Net style),
``segresnet`` (MONAI `SegResNet`). Every one downsamples by 2 per level unless ``strides`` (``unet``,
``dynunet``) says otherwise per level and axis -- ``[[2, 2, 1], [2, 2, 1], [2, 2, 2]]`` keeps the
coarse slice axis of a 4 mm CT unpooled until the in-plane spacing nears it (nnU-Net's rule, chosen
by `segloop.ml.plan`); spatial input sizes must be multiples of `size_divisor` on each axis.
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


def takes_strides(arch: str) -> bool:
    """Whether architecture ``arch`` accepts per-level, per-axis ``strides``."""
    return arch in _REGISTRY and "strides" in _REGISTRY[arch][1]


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
    if "strides" in defaults:
        strides = _check_strides(full.pop("strides", None), len(full["channels"]) - 1)
        if strides is not None:  # absent means 2 everywhere: configs of such models stay as they were
            full["strides"] = strides
    return full


def _check_strides(strides: Any, levels: int) -> list[list[int]] | None:
    """``strides`` as one ``[x, y, z]`` per downsampling level (an int is the same on every axis),
    or None (2 everywhere); ValueError naming what is wrong."""
    if strides is None:
        return None
    if not isinstance(strides, (list, tuple)) or len(strides) != levels:
        raise ValueError(f"strides must list one stride per downsampling level ({levels}), got {strides!r}")
    out = []
    for s in strides:
        t = [s, s, s] if isinstance(s, int) else s
        if not isinstance(t, (list, tuple)) or len(t) != 3 or not all(isinstance(v, int) and v in (1, 2) for v in t):
            raise ValueError(f"each stride must be 1 or 2, or three of them (x, y, z), got {s!r}")
        out.append([int(v) for v in t])
    return out


def level_strides(config: dict[str, Any]) -> list[tuple[int, int, int]]:
    """The downsampling stride of each level, per axis ``(x, y, z)`` (2 everywhere unless ``strides`` is set)."""
    cfg = network_config(config)
    if cfg.get("strides") is not None:
        return [(s[0], s[1], s[2]) for s in cfg["strides"]]
    if cfg["arch"] == "segresnet":
        return [(2, 2, 2)] * (len(cfg["blocks_down"]) - 1)
    return [(2, 2, 2)] * (len(cfg["channels"]) - 1)


def size_divisor(config: dict[str, Any]) -> tuple[int, int, int]:
    """Spatial input sizes must be multiples of these, per axis (the product of the level strides)."""
    cfg = network_config(config)
    if "divisor" in cfg:  # imported architectures (segloop.ml.bundle_network) state it
        d = int(cfg["divisor"])
        return (d, d, d)
    div = [1, 1, 1]
    for s in level_strides(cfg):
        div = [a * b for a, b in zip(div, s, strict=True)]
    return (div[0], div[1], div[2])


def describe_divisor(div: tuple[int, int, int]) -> str:
    """``8``, or ``8x8x2 (x, y, z)`` where the axes differ -- for messages about patch sizes."""
    return str(div[0]) if len(set(div)) == 1 else "x".join(map(str, div)) + " (x, y, z)"


def build_network(config: dict[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """Instantiate the network described by ``config`` (see `network_config`)."""
    cfg = network_config(config)
    builder = _REGISTRY[cfg["arch"]][0]
    return builder(cfg, int(in_channels), int(out_channels))


@register("unet", {"channels": [16, 32, 64, 128], "num_res_units": 2, "dropout": 0.1, "norm": "instance", "strides": None})
def _unet(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import UNet

    ch = cfg["channels"]
    return UNet(
        spatial_dims=3,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=tuple(ch),
        strides=_per_level(level_strides(cfg)),
        num_res_units=int(cfg["num_res_units"]),
        dropout=cfg["dropout"],
        norm=cfg["norm"],
    )


def _per_level(strides: list[tuple[int, int, int]]) -> Any:
    """MONAI's ``strides``: an int for a level that pools every axis alike, else its ``(x, y, z)``."""
    return tuple(t[0] if t[0] == t[1] == t[2] else t for t in strides)


@register("dynunet", {"channels": [16, 32, 64, 128], "dropout": 0.1, "res_block": True, "strides": None})
def _dynunet(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    ch = cfg["channels"]
    n = len(ch)
    downs = [list(t) for t in level_strides(cfg)]
    return DynUNet(
        spatial_dims=3,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=[3] * n,
        strides=[1, *downs],
        upsample_kernel_size=downs,
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
