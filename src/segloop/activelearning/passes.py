"""Forward passes of the shared model for uncertainty scoring (torch; built on `segloop.ml`'s public functions).

All arrays are on the *model* grid: the image is prepared once with `Predictor.prepare`
(normalised, resampled to the model spacing) and every pass runs on that ``(C_img, X, Y, Z)``
array, giving probabilities ``(C, X, Y, Z)``. Scores are means over voxels, so nothing is
resampled back to the image grid (cheaper, and the same ranking up to interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segloop.ml.inference import predict_probabilities, set_mc_dropout
from segloop.ml.predictor import Predictor


def has_dropout(predictor: Predictor) -> bool:
    """Whether the network has active dropout layers (needed for MC dropout)."""
    kinds = (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)
    return any(isinstance(m, kinds) and float(getattr(m, "p", 0.0)) > 0 for m in predictor.net.modules())


def _run(predictor: Predictor, data: np.ndarray) -> np.ndarray:
    spec = predictor.spec
    # Zero extra input (no clicks, no previous mask), as many channels as the network takes after
    # the image: guidance only, or guidance + previous mask for ``mask_input`` models.
    channels = int(getattr(spec, "extra_channels", spec.num_classes))
    extra = np.zeros((channels, *data.shape[1:]), dtype=np.float32)
    return predict_probabilities(predictor.net, data, extra, spec.patch_size, spec.num_classes, predictor.device)


def plain_pass_probabilities(predictor: Predictor, data: np.ndarray) -> np.ndarray:
    """One deterministic click-free pass, not mirrored (`Predictor.automatic_probabilities` averages
    mirrored passes): ``(C_img, X, Y, Z)`` -> ``(C, X, Y, Z)``."""
    set_mc_dropout(predictor.net, False)
    return _run(predictor, data)


def mc_dropout_samples(predictor: Predictor, data: np.ndarray, passes: int, seed: int) -> np.ndarray:
    """``passes`` click-free passes with dropout active: ``(N, C, X, Y, Z)``.

    The torch RNG is seeded with ``seed`` inside a forked RNG state, so results are
    reproducible and the caller's RNG is untouched. The network is left in eval mode.
    """
    out = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            set_mc_dropout(predictor.net, True)
            for _ in range(passes):
                out.append(_run(predictor, data))
    finally:
        set_mc_dropout(predictor.net, False)
    return np.stack(out)


def tta_samples(
    predictor: Predictor,
    data: np.ndarray,
    passes: int,
    seed: int,
    flip_axes: Sequence[int] = (0,),
    intensity: float = 0.1,
) -> np.ndarray:
    """Test-time augmentation: pass 0 is the plain image, the others random flips along
    ``flip_axes`` and an intensity scale ``U(1-intensity, 1+intensity)`` and shift
    ``U(-intensity, intensity)`` (on the normalised image); each output is flipped back.

    Returns:
        ``(N, C, X, Y, Z)``.
    """
    rng = np.random.default_rng(seed)
    set_mc_dropout(predictor.net, False)
    out = [_run(predictor, data)]
    for _ in range(passes - 1):
        axes = [a for a in flip_axes if rng.random() < 0.5]
        if flip_axes and not axes:  # always change something geometric when allowed
            axes = [int(flip_axes[int(rng.integers(len(flip_axes)))])]
        x = data
        if axes:
            x = np.flip(x, axis=tuple(a + 1 for a in axes))
        if intensity > 0:
            x = x * np.float32(rng.uniform(1 - intensity, 1 + intensity)) + np.float32(rng.uniform(-intensity, intensity))
        p = _run(predictor, np.ascontiguousarray(x, dtype=np.float32))
        if axes:
            p = np.ascontiguousarray(np.flip(p, axis=tuple(a + 1 for a in axes)))
        out.append(p)
    return np.stack(out)


class _BottleneckRecorder:
    """Forward hooks on every module of a network that keep, per module with a 5-D output
    ``(B, C, X, Y, Z)``, the per-channel sum and sum of squares over all windows and voxels (after
    the first window, only for the modules whose maps are the coarsest).
    The bottleneck is the module with the coarsest output (fewest voxels), the most channels,
    and the last to run among those (the end of the deepest block), whatever the architecture.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        self._stats: dict[int, list[Any]] = {}  # id -> [first run order, voxels, sum, sumsq, count]
        # the fewest voxels of any map, known once the first window has run through every module:
        # from then on only maps that coarse are summed (the full-resolution ones cost the most)
        self._coarsest: int | None = None
        if any(isinstance(m, torch.jit.ScriptModule) for m in net.modules()):
            raise ValueError(
                "this model is a TorchScript file, whose feature maps cannot be read: strategies that describe "
                "images by the network's features (typiclust) need a model segloop can rebuild; use entropy or tta"
            )
        self._handles = [m.register_forward_hook(self._hook) for m in net.modules()]

    def _hook(self, module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 5:
            return
        voxels = int(output.shape[2] * output.shape[3] * output.shape[4])
        entry = self._stats.get(id(module))
        if entry is not None and self._coarsest is None:  # a module runs again: the next window
            self._coarsest = min(e[1] for e in self._stats.values())
        if self._coarsest is not None and voxels > self._coarsest:
            return  # not the bottleneck: it needs no statistics
        o = output.detach().float()
        s = o.sum(dim=(0, 2, 3, 4))
        sq = (o * o).sum(dim=(0, 2, 3, 4))
        count = o.shape[0] * voxels
        if entry is None:
            self._stats[id(module)] = [len(self._stats), voxels, s, sq, count]
        else:
            entry[2] = entry[2] + s
            entry[3] = entry[3] + sq
            entry[4] += count

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def features(self) -> np.ndarray:
        """``(2 * C,)`` float32: the bottleneck's per-channel mean and standard deviation."""
        if not self._stats:
            raise ValueError("the network produced no 3-D feature maps to describe the image with")
        _order, _voxels, s, sq, count = min(
            self._stats.values(), key=lambda e: (e[1], -int(e[2].numel()), -e[0])
        )
        mean = s / count
        std = torch.sqrt(torch.clamp(sq / count - mean * mean, min=0.0))
        return torch.cat([mean, std]).cpu().numpy().astype(np.float32)


def automatic_with_features(predictor: Predictor, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The click-free pass of `plain_pass_probabilities`, also describing the image by the network's
    own bottleneck features (per-channel mean and standard deviation over every window).

    Returns:
        ``(probabilities (C, X, Y, Z), features (2 * C_bottleneck,))``.
    """
    set_mc_dropout(predictor.net, False)
    recorder = _BottleneckRecorder(predictor.net)
    try:
        probs = _run(predictor, data)
    finally:
        recorder.close()
    return probs, recorder.features()
