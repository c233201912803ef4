"""Architectures of imported models, in the `segloop.ml.networks` registry.

- ``monai``: any network class of ``monai.networks.nets`` built from plain keyword arguments, as
  a MONAI bundle's ``network_def`` names it::

      {"arch": "monai", "target": "UNet", "args": {"spatial_dims": 3, "channels": [16, 32, 64],
       "strides": [2, 2], "num_res_units": 2, "norm": "batch"}, "divisor": 4, "dropout": 0.0}

  ``in_channels`` / ``out_channels`` are passed by the caller, as for the other architectures, so
  segloop's trainer can build (and fine-tune) it. ``divisor``: spatial input sizes must be
  multiples of it. Only names of ``monai.networks.nets`` can be targets: a config never imports
  or runs other code.
- ``torchscript``: a TorchScript archive. It has no config to rebuild it from, so it can be
  loaded (`segloop.ml.predictor.Predictor.load` does that from the checkpoint file itself) but not
  built, hence not fine-tuned.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from segloop.ml.networks import register

# Arguments the caller sets; a bundle's values for them are checked, then dropped from "args".
CHANNEL_ARGS = ("in_channels", "out_channels")


def monai_network_class(target: str) -> type[nn.Module]:
    """The class ``monai.networks.nets.<target>``; ValueError when there is no such network."""
    from monai.networks import nets

    name = target.rsplit(".", 1)[-1]
    if target not in (name, f"monai.networks.nets.{name}"):
        raise ValueError(f"network {target!r} is not a class of monai.networks.nets")
    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"network {target!r} is not a class of monai.networks.nets")
    params = inspect.signature(cls.__init__).parameters
    missing = [a for a in CHANNEL_ARGS if a not in params]
    if missing:
        raise ValueError(f"network {name} takes no {' / '.join(missing)} argument: segloop cannot set its channels")
    return cls


@register("monai", {"target": "UNet", "args": {}, "divisor": 16, "dropout": 0.0})
def _monai(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    cls = monai_network_class(str(cfg["target"]))
    args = dict(cfg["args"] or {})
    for a in CHANNEL_ARGS:
        args.pop(a, None)
    try:
        return cls(in_channels=in_ch, out_channels=out_ch, **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"cannot build MONAI {cls.__name__} from {args}: {exc}") from exc


@register("torchscript", {"divisor": 1, "dropout": 0.0})
def _torchscript(cfg: dict[str, Any], in_ch: int, out_ch: int) -> nn.Module:
    raise ValueError(
        "a TorchScript model cannot be rebuilt from a config, so it cannot be trained or fine-tuned; "
        "train a segloop model (segloop train) or import a MONAI bundle whose network is a MONAI network"
    )
