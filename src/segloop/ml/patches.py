"""Training patches: where they are cut, how they are augmented, and the clicks simulated on
them (steps 3-5 of the recipe in `segloop.ml.training`). Plain functions over arrays.

Shapes: a `Case` holds the image ``(C, X, Y, Z)`` float32 on the model grid and its label
``(X, Y, Z)`` of class indices; a batch is images ``(B, C, *patch)`` and labels ``(B, *patch)``;
simulated guidance is ``(B, E, *patch)``.

Box prompts (``box_input`` models): a user draws a box around a structure with some slack, so a
simulated box is the bounding box of the class's voxels in the patch grown by 0..`BOX_SLACK`
voxels on each side (drawn per side), clipped to the patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from segloop.ml.clicks import Click
from segloop.ml.guidance import encode_boxes, encode_guidance
from segloop.ml.inference import set_mc_dropout
from segloop.ml.modelspec import ModelSpec
from segloop.ml.train_config import TrainConfig
from segloop.ml.virtual_user import next_click

BOX_SLACK = 2


@dataclass
class Case:
    image_id: str
    revision: int
    image: np.ndarray  # (C, X, Y, Z) float32 normalised, on the model grid
    label: np.ndarray  # (X, Y, Z) uint8 class indices (0..K-1)
    fg: list[np.ndarray]  # per foreground class index, (N, 3) voxel coordinates (subsampled)


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Crop the last three axes at ``start`` (may be negative / overflow), zero-padding outside."""
    out = np.zeros((*array.shape[:-3], *size), dtype=array.dtype)
    src: list[slice] = []
    dst: list[slice] = []
    for s, n, dim in zip(start, size, array.shape[-3:], strict=True):
        a, b = max(0, s), min(dim, s + n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


def patch_start(center: Sequence[int], shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> list[int]:
    start = []
    for c, dim, n in zip(center, shape, size, strict=True):
        if dim >= n:
            start.append(int(np.clip(c - n // 2, 0, dim - n)))
        else:  # the image is smaller: place it at a random offset inside the patch
            start.append(-int(rng.integers(0, n - dim + 1)))
    return start


def augment(img: np.ndarray, lab: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    for ax in cfg.flip_axes:
        if rng.random() < 0.5:
            img = np.flip(img, axis=ax + 1)
            lab = np.flip(lab, axis=ax)
    img = np.ascontiguousarray(img)
    lab = np.ascontiguousarray(lab)
    if rng.random() < 0.3:  # gamma on the patch's own range
        lo, hi = float(img.min()), float(img.max())
        if hi > lo:
            g = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
            img = ((img - lo) / (hi - lo)) ** g * (hi - lo) + lo
    r = rng.random()
    if r < 0.2:
        img = np.stack([ndimage.gaussian_filter(c, float(rng.uniform(0.5, 1.0))) for c in img])
    elif r < 0.3:
        alpha = float(rng.uniform(0.2, 0.6))
        img = np.stack([c + alpha * (c - ndimage.gaussian_filter(c, 1.0)) for c in img])
    if rng.random() < 0.8:
        img = img * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
    return img.astype(np.float32, copy=False), lab


def sample_batch(
    cases: list[Case], cfg: TrainConfig, patch: Sequence[int], rng: np.random.Generator, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patches (default ``cfg.batch_size``), centred on foreground with probability
    ``cfg.fg_ratio``, which must be resolved (`segloop.ml.training.train` takes None from the plan).

    Raises:
        ValueError: ``cfg.fg_ratio`` is None.
    """
    if cfg.fg_ratio is None:
        raise ValueError("sample_batch needs a foreground rate: resolve fg_ratio None from the plan first")
    imgs, labs = [], []
    fg_ratio = cfg.fg_ratio
    for _ in range(cfg.batch_size if n is None else n):
        case = cases[int(rng.integers(len(cases)))]
        shape = case.label.shape
        nonempty = [p for p in case.fg if len(p)]
        if nonempty and rng.random() < fg_ratio:
            pts = nonempty[int(rng.integers(len(nonempty)))]
            center = pts[int(rng.integers(len(pts)))]
        else:
            center = np.array([rng.integers(0, s) for s in shape])
        start = patch_start(center, shape, patch, rng)
        img, lab = augment(crop(case.image, start, patch), crop(case.label, start, patch), cfg, rng)
        imgs.append(img)
        labs.append(lab)
    return np.stack(imgs), np.stack(labs)


def simulate_clicks(
    net: torch.nn.Module,
    imgs: np.ndarray,
    labs: np.ndarray,
    spec: ModelSpec,
    cfg: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
) -> np.ndarray:
    """Extra input ``(B, E, X, Y, Z)``: guidance from clicks placed iteratively in the current
    errors (+ the one-hot prediction they correct, for ``mask_input`` models; + the boxes they
    start from, for ``box_input`` models: `simulate_boxes`)."""
    k = spec.num_classes
    b = imgs.shape[0]
    shape = imgs.shape[2:]
    clicks: list[list[Click]] = [[] for _ in range(b)]
    guidance = np.zeros((b, k, *shape), dtype=np.float32)
    prev = np.zeros((b, k, *shape), dtype=np.float32)  # no previous mask yet: automatic start
    values = list(range(k))  # class indices (the network's own numbering)
    boxes = simulate_boxes(labs, k, cfg.box_prob, rng) if spec.box_input else None
    # with a box, the network's answer to the box alone is a case to learn too (0 clicks)
    first = 0 if boxes is not None and boxes.any() else 1
    iters = int(rng.integers(first, cfg.max_click_iters + 1))

    def extra() -> list[np.ndarray]:  # the input after the image channels, in ModelSpec's order
        return [guidance, *([prev] if spec.mask_input else []), *([boxes] if boxes is not None else [])]

    was_training = net.training
    set_mc_dropout(net, False)
    try:
        for _ in range(iters):
            with torch.no_grad():
                x = torch.from_numpy(np.concatenate([imgs, *extra()], axis=1)).to(device)
                pred = net(x).argmax(dim=1).cpu().numpy()
            if spec.mask_input:
                prev = np.stack([(pred == c) for c in values], axis=1).astype(np.float32)
            for i in range(b):
                for c in values[1:]:
                    click = next_click(pred[i], labs[i], [c], rng)
                    if click is not None:
                        clicks[i].append(click)
                guidance[i] = encode_guidance(clicks[i], shape, values, spec.guidance_sigma)
    finally:
        net.train(was_training)
    parts = extra()
    return np.concatenate(parts, axis=1) if len(parts) > 1 else guidance


def simulate_boxes(labs: np.ndarray, num_classes: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Box channels ``(B, K-1, X, Y, Z)`` for a batch of label patches ``(B, X, Y, Z)`` (class
    indices 0..K-1): each foreground class present in a patch gets, with probability ``prob``, its
    bounding box grown by 0..`BOX_SLACK` voxels a side (`segloop.ml.guidance.encode_boxes`)."""
    b, shape = labs.shape[0], labs.shape[1:]
    values = list(range(num_classes))
    out = np.zeros((b, num_classes - 1, *shape), dtype=np.float32)
    for i in range(b):
        boxes = []
        for c in values[1:]:
            if rng.random() >= prob:
                continue
            idx = np.nonzero(labs[i] == c)
            if not len(idx[0]):
                continue
            grow = rng.integers(0, BOX_SLACK + 1, size=(2, 3))
            boxes.append((c, tuple(
                slice(max(0, int(a.min()) - int(grow[0, ax])), min(n, int(a.max()) + 1 + int(grow[1, ax])))
                for ax, (a, n) in enumerate(zip(idx, shape, strict=True))
            )))
        out[i] = encode_boxes(boxes, shape, values)
    return out
