"""Tiny models users might bring, built by the tests themselves (nothing is downloaded):
a MONAI bundle folder (a small MONAI UNet saved with torch.save + its JSON configs) and a
TorchScript file with its model JSON."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

CLASSES = {"0": "background", "1": "Anterior", "2": "Posterior"}
NET_DEF: dict[str, Any] = {
    "_target_": "UNet", "spatial_dims": 3, "in_channels": "@input_channels", "out_channels": 3,
    "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch",
}


def tiny_unet(in_channels: int = 1, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=(4, 8), strides=(2,),
                num_res_units=0, norm="batch").eval()


def make_bundle(
    root: Path,
    *,
    metadata: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    weights: Any = None,
    torchscript: bool = False,
) -> Path:
    """A bundle folder at ``root``: the defaults describe a 1-channel, 3-class hippocampus model."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = metadata if metadata is not None else {
        "name": "Tiny hippocampus UNet", "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": [16, 16, 16], "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": [16, 16, 16], "channel_def": CLASSES}},
        },
    }
    inf = inference if inference is not None else {
        "input_channels": 1,
        "network_def": NET_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 1000, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "configs" / "inference.json").write_text(json.dumps(inf))
    net = tiny_unet()
    if torchscript:
        torch.jit.script(net).save(str(root / "models" / "model.ts"))
    else:
        torch.save(weights if weights is not None else net.state_dict(), root / "models" / "model.pt")
    return root


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, Path(folder.name) / p.relative_to(folder))
    return dest


def make_torchscript(path: Path, model_json: dict[str, Any] | None = None, trace: bool = True) -> Path:
    """A TorchScript file at ``path`` with ``path.with_suffix('.json')`` beside it; returns ``path``."""
    net = tiny_unet(seed=1)
    module = torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)) if trace else torch.jit.script(net)
    module.save(str(path))
    spec = model_json if model_json is not None else {
        "classes": ["background", "Anterior", "Posterior"], "patch_size": [16, 16, 16], "spacing": None,
        "intensity": {"kind": "zscore"},
    }
    path.with_suffix(".json").write_text(json.dumps(spec))
    return path
