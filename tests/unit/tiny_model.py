"""An untrained tiny 3-class network as a `Predictor`: enough for tests of a session's
bookkeeping and encoding, where what the network predicts does not matter."""

from __future__ import annotations

import torch

from segloop.ml.modelspec import ModelSpec
from segloop.ml.predictor import Predictor


def tiny_predictor(seed: int = 0, box_input: bool = False) -> Predictor:
    """UNet (4, 8 channels), classes 0 background / 1 a / 2 b, 16^3 patches, on the CPU
    (``box_input``: with the two box channels of a model trained with box prompts)."""
    torch.manual_seed(seed)
    spec = ModelSpec.from_config(
        {
            "network": {"arch": "unet", "channels": [4, 8], "num_res_units": 0, "dropout": 0.0},
            "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "a"}, {"value": 2, "name": "b"}],
            "image_channels": 1,
            "patch_size": [16, 16, 16],
            "spacing": None,
            "box_input": box_input,
        }
    )
    net = spec.build()
    net.eval()
    return Predictor(net, spec, "tiny", 1, torch.device("cpu"))
