"""Guidance encoding: clicks -> extra input channels of the network.

One channel per class value, background included, in the order of ``class_values`` (normally
``[0, 1, ..., n]``). Each click adds a Gaussian blob ``exp(-d² / (2 σ²))`` (``d`` in voxels of
the grid the channels are built on) centred on its voxel, cut to zero beyond a radius of ceil(3σ) voxels; overlapping blobs of
the same class take the maximum, so values stay in [0, 1] and a click's voxel is exactly 1.
Without clicks every channel is zero, which is also what the network sees for automatic
segmentation.

Box prompts (`encode_boxes`, for models trained with ``box_input``): one more channel per
*foreground* class, 1 inside that class's boxes and 0 elsewhere (nnInteractive encodes a box the
same way: a filled region in a prompt channel).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from segloop.ml.clicks import Click

DEFAULT_SIGMA = 3.0


def encode_guidance(
    clicks: Iterable[Click],
    shape: Sequence[int],
    class_values: Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    offset: Sequence[int] = (0, 0, 0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Guidance channels for ``clicks``.

    Args:
        clicks: clicks in the voxel indices of the *source* grid.
        shape: spatial shape ``(X, Y, Z)`` of the output (may be a crop of the grid).
        class_values: class values, one channel each, background (0) included.
        sigma: Gaussian width in output voxels.
        offset: index in the (scaled) grid of the output's first voxel (for crops).
        scale: factors mapping source indices to output-grid indices (``out = in * scale - offset``),
            for a model grid resampled from the image grid.

    Returns:
        ``float32`` array ``(len(class_values), X, Y, Z)``; clicks of values not in
        ``class_values`` are ignored, blobs outside the output are clipped.
    """
    shape3 = tuple(int(s) for s in shape)
    out = np.zeros((len(class_values), *shape3), dtype=np.float32)
    index = {int(v): n for n, v in enumerate(class_values)}
    radius = max(1, int(np.ceil(3 * sigma)))
    for click in clicks:
        ch = index.get(int(click.value))
        if ch is None:
            continue
        centre = [float(p) * float(s) - float(o) for p, s, o in zip(click.point, scale, offset, strict=True)]
        c = [int(round(v)) for v in centre]
        lo = [max(0, v - radius) for v in c]
        hi = [min(n, v + radius + 1) for v, n in zip(c, shape3, strict=True)]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            continue
        grids = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d2 = sum((g - v) ** 2 for g, v in zip(grids, c, strict=True))
        blob = np.where(d2 <= radius * radius, np.exp(-d2 / (2.0 * sigma * sigma)), 0.0).astype(np.float32)
        region = out[ch, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(region, blob, out=region)
    return out


def encode_boxes(
    boxes: Iterable[tuple[int, Sequence[slice]]],
    shape: Sequence[int],
    class_values: Sequence[int],
    offset: Sequence[int] = (0, 0, 0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Box channels for ``boxes`` (``(class value, (slice, slice, slice))`` on the source grid).

    Args:
        boxes: the boxes, ``[start, stop)`` voxel slices of the *source* grid, each of a class.
        shape: spatial shape ``(X, Y, Z)`` of the output (may be a crop of the grid).
        class_values: class values of the model, background (0) included; one channel per
            foreground value, in this order.
        offset, scale: as for `encode_guidance` (``out = in * scale - offset``); a box covers every
            output voxel its source voxels touch.

    Returns:
        ``float32`` array ``(len(foreground values), X, Y, Z)``; boxes of the background or of an
        unknown value are ignored, boxes are clipped to the output.
    """
    shape3 = tuple(int(s) for s in shape)
    foreground = [int(v) for v in class_values if int(v) != 0]
    out = np.zeros((len(foreground), *shape3), dtype=np.float32)
    for value, region in boxes:
        if int(value) not in foreground:
            continue
        lo = [max(0, int(np.floor(r.start * s - o))) for r, s, o in zip(region, scale, offset, strict=True)]
        hi = [min(n, int(np.ceil(r.stop * s - o))) for r, s, o, n in zip(region, scale, offset, shape3, strict=True)]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            continue
        out[foreground.index(int(value)), lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0
    return out
