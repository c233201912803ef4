"""Running a network over a volume: sliding windows, softmax, MC dropout switch.

Arrays here are on the *model* grid and channel-first: image ``(C_img, X, Y, Z)``, extra
input channels ``(E, X, Y, Z)``, probabilities ``(C_cls, X, Y, Z)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

SW_OVERLAP = 0.25
SW_BATCH = 2


def set_mc_dropout(net: nn.Module, enabled: bool) -> None:
    """Eval mode for the whole network, with dropout layers left active when ``enabled`` (MC dropout)."""
    net.eval()
    if enabled:
        for m in net.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
                m.train()


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    if isinstance(out, (list, tuple)):  # deep supervision heads
        out = out[0]
    if out.ndim == 6:  # DynUNet with deep supervision in training mode stacks heads
        out = out[:, 0]
    return out


@torch.no_grad()
def predict_probabilities(
    net: nn.Module,
    image: np.ndarray,
    extra: np.ndarray | None,
    patch_size: Sequence[int],
    num_classes: int,
    device: torch.device | str = "cpu",
    overlap: float = SW_OVERLAP,
    sw_batch_size: int = SW_BATCH,
    extra_channels: int | None = None,
) -> np.ndarray:
    """Class probabilities for a whole (or cropped) volume with MONAI sliding-window inference.

    Args:
        net: the network, already in the wanted mode (see `set_mc_dropout`).
        image: normalised image ``(C_img, X, Y, Z)`` float32.
        extra: the input channels after the image, ``(E, X, Y, Z)``: guidance, then the previous
            mask when the model takes one (see `ModelSpec`); None for zeros (automatic segmentation).
        patch_size: window size; volumes smaller than it are zero-padded.
        extra_channels: E, needed when ``extra`` is None (default ``num_classes``).

    Returns:
        ``float32`` softmax probabilities ``(num_classes, X, Y, Z)``.
    """
    from monai.inferers import sliding_window_inference

    if extra is None:
        n_extra = num_classes if extra_channels is None else extra_channels  # 0: automatic-only model
        extra = np.zeros((n_extra, *image.shape[1:]), dtype=np.float32)
    x = torch.from_numpy(np.concatenate([image, extra], axis=0)[None]).to(device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_logits(net, batch), dim=1)

    if all(s <= p for s, p in zip(image.shape[1:], patch_size, strict=True)):
        # One window: pad to the patch size (the network needs multiples of its divisor).
        pad = []
        for s, p in reversed(list(zip(image.shape[1:], patch_size, strict=True))):
            pad += [(p - s) // 2, p - s - (p - s) // 2]
        xp = torch.nn.functional.pad(x, pad)
        probs = run(xp)
        sl = [slice(pad[2 * (2 - i)], pad[2 * (2 - i)] + s) for i, s in enumerate(image.shape[1:])]
        out = probs[0, :, sl[0], sl[1], sl[2]]
    else:
        out = sliding_window_inference(
            x, tuple(int(p) for p in patch_size), sw_batch_size, run, overlap=overlap, mode="gaussian"
        )[0]
    return np.ascontiguousarray(out.float().cpu().numpy())
