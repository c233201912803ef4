"""Fingerprint -> plan: training settings derived from the dataset itself (as nnU-Net does).

Nothing here is tuned to one dataset. A `segloop.ml.fingerprint.Fingerprint` summarises the
labelled images (shapes, spacings, modality, foreground intensities, structure sizes);
`make_plan` turns it into the settings a training needs on *this* machine:

- **spacing**: the median spacing per axis (nnU-Net's rule). Where one axis is much coarser
  than the others (anisotropy > 3), that axis keeps its 10th-percentile spacing instead of the
  median, so thin slices are not invented by upsampling.
- **patch size**: the median image shape on that grid, rounded up to the network's divisor —
  unless it exceeds the device's voxel budget (`CPU_PATCH_VOXELS` on a CPU, `GPU_PATCH_VOXELS`
  on a GPU); then, as nnU-Net does, a patch of about the same length in millimetres on every
  axis (fewer voxels along coarse slices), clipped to the image, that fits the budget. *Trade-off*: a smaller
  field of view per step (the model sees less context, sliding-window inference stitches more
  windows) for steps that a 2-core CPU can afford. Foreground-centred sampling keeps small
  structures in view.
- **a coarser grid** where the capped patch cannot see the largest structure whole (nnU-Net's
  3d_lowres idea, `context_spacing`): the finer axes' spacing grows until the patch's field of
  view holds the largest class's median bounding box, as long as the thinnest class keeps
  `MIN_VOXELS_ACROSS` voxels across its thickness (lower quartile over the cases; both measured by
  the fingerprint). On a made-up 0.83x0.83x4 mm abdominal CT the CPU patch saw 87 mm of a 130 mm
  organ, and the models took look-alike tissue for it; on a grid of about 1.3 mm in plane it sees
  most of it. Thin structures (a 2 mm sheet, 4 mm vessels) keep the data's grid.
  *Trade-off*: boundaries are placed on the coarser grid (the probabilities are resampled back).
- **pooling** (on an anisotropic grid, on a GPU): the network does not halve an axis whose spacing
  is 2x or more the finest axis' at that level -- a 4 mm slice axis under 0.8 mm in plane is
  pooled only once the in-plane spacing has reached 3.2 mm (nnU-Net's rule; ``strides`` of the
  network config, so the patch needs multiples of 2 on that axis, not 8), and the patch budget
  shrinks by what the unpooled levels cost (`pooling_cost`). *On a CPU* the network pools every
  axis and the plan says what the rule would have chosen: on a made-up 0.83x0.83x4 mm CT it cost
  2.4x the time of a whole-volume pass (87 s against 36 s on one core) and gave the same Dice
  after 600 steps (0.336 / 0.331 against 0.328). A ``strides`` in the network config is always
  used as given.
- **intensity normalisation**: CT (HU) — one dataset-wide window, the 0.5–99.5 percentiles of
  the foreground voxels, then a z-score with the foreground mean and sd (nnU-Net's CT scheme,
  written as a ``range`` map so inference applies the same numbers); MR and anything else — a
  robust z-score per image (segloop's default).
- **foreground sampling** (``fg_ratio``, the share of patches centred on a foreground voxel):
  2 in 3 while the structures are small against the patch, so they stay in view; 1 in 3, as
  nnU-Net does, once the patch is smaller than the image and a class fills a quarter of it or
  more: patches centred on such a structure show little else, and a model trained on them took
  look-alike tissue for it (a made-up abdominal CT: organ Dice 0.46 against 0.53 after 1200 steps,
  with 1 in 3).
- **throughput**: a short calibration (a few optimiser steps of the planned network and patch on
  this device) gives seconds per step, so step budgets can be chosen from minutes without
  guessing and the plan can say, before an hour is spent, that a dataset does not fit.

Plain functions and frozen dataclasses; the CLI prints `Plan.describe()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from segloop.ml.fingerprint import Fingerprint
from segloop.ml.networks import network_config, size_divisor, takes_strides
from segloop.ml.preprocess import resampled_shape, zoom_factors

CPU_PATCH_VOXELS = 64 * 64 * 64  # ~0.3-0.5 s per step of batch 2 on 2 CPU cores
GPU_PATCH_VOXELS = 128 * 128 * 128
MAX_PATCH_AXIS = 192
ANISOTROPY = 3.0
FG_RATIO_SMALL = 0.67  # structures small against the patch: keep them in view
FG_RATIO_LARGE = 0.33  # a structure fills much of the patch: nnU-Net's oversampling
LARGE_STRUCTURE = 0.25  # ... "much" = this share of the patch's voxels
MIN_VOXELS_ACROSS = 12  # a coarser grid keeps at least this many voxels across the thinnest structure
GRID_STEP = 1.03  # how much a coarser grid's spacing grows per try (nnU-Net's factor)


@dataclass(frozen=True)
class Plan:
    """Training settings for one dataset on one device (see the module docstring)."""

    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    intensity: dict[str, Any] | None  # None: robust z-score per image
    device: str
    network: dict[str, Any]
    seconds_per_step: float | None = None  # measured by `calibrate`
    resampled_median_shape: tuple[int, int, int] | None = None
    notes: tuple[str, ...] = ()
    fg_ratio: float = FG_RATIO_SMALL  # share of training patches centred on foreground

    def train_overrides(self) -> dict[str, Any]:
        """`segloop.ml.training.TrainConfig` fields this plan sets."""
        out: dict[str, Any] = {"patch_size": list(self.patch_size), "spacing": list(self.spacing),
                               "batch_size": self.batch_size, "fg_ratio": self.fg_ratio}
        if self.intensity is not None:
            out["intensity"] = dict(self.intensity)
        return out

    def steps_for_minutes(self, minutes: float) -> int | None:
        """Optimiser steps that ``minutes`` buy on this device (None before calibration)."""
        if not self.seconds_per_step:
            return None
        return max(1, int(minutes * 60.0 / self.seconds_per_step))

    def minutes_for_steps(self, steps: int) -> float | None:
        return None if not self.seconds_per_step else steps * self.seconds_per_step / 60.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    def describe(self) -> str:
        """A few lines for the terminal."""
        sps = f"{self.seconds_per_step:.2f} s/step ({60.0 / self.seconds_per_step:.0f} steps/min)" if self.seconds_per_step else "not calibrated"
        norm = "robust z-score per image" if self.intensity is None else (
            f"{self.intensity['kind']} [{self.intensity.get('a_min', 0):.1f}, {self.intensity.get('a_max', 0):.1f}] -> "
            f"[{self.intensity.get('b_min', 0):.2f}, {self.intensity.get('b_max', 0):.2f}]"
        )
        lines = [
            f"plan: spacing {_fmt3(self.spacing)} mm, patch {'x'.join(map(str, self.patch_size))}, batch {self.batch_size}, "
            f"{self.network.get('arch')} {self.network.get('channels')}, on {self.device}",
            f"plan: intensity {norm}; median image on that grid {'x'.join(map(str, self.resampled_median_shape or ()))}; "
            f"throughput {sps}; {self.fg_ratio:.0%} of patches centred on foreground",
        ]
        lines += [f"plan: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt3(v: Sequence[float]) -> str:
    return "x".join(f"{x:g}" for x in v)


def target_spacing(fp: Fingerprint) -> tuple[tuple[float, float, float], str | None]:
    """Median spacing; an axis much coarser than the others keeps its 10th percentile (nnU-Net)."""
    sp = np.array(fp.spacings, dtype=float)
    med = np.median(sp, axis=0)
    note = None
    worst = int(np.argmax(med))
    others = np.delete(med, worst)
    if others.size and med[worst] > ANISOTROPY * float(others.max()):
        med[worst] = float(np.percentile(sp[:, worst], 10))
        note = (f"anisotropic: axis {worst} keeps {med[worst]:g} mm (10th percentile), "
                f"{ANISOTROPY:g}x coarser than the others")
    return (float(med[0]), float(med[1]), float(med[2])), note


def pooling_strides(spacing: Sequence[float], levels: int) -> list[list[int]]:
    """nnU-Net's pooling rule: at each of ``levels`` downsamplings, halve the axes whose current
    spacing is less than twice the finest current spacing; the others keep stride 1 until the
    finer axes have caught up. ``(0.8, 0.8, 4)`` -> ``[[2, 2, 1], [2, 2, 1], [2, 2, 2]]``."""
    cur = [float(s) for s in spacing]
    out = []
    for _ in range(levels):
        finest = min(cur)
        stride = [2 if c / finest < 2.0 else 1 for c in cur]
        out.append(stride)
        cur = [c * t for c, t in zip(cur, stride, strict=True)]
    return out


def pooled_network(
    net: dict[str, Any], spacing: Sequence[float], given: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """``net`` with the `pooling_strides` of ``spacing`` where the grid calls for them (and a note
    saying so); unchanged on a grid that pools every axis, for an architecture without ``strides``,
    or when the user's network config ``given`` sets them."""
    if not takes_strides(net["arch"]) or "strides" in (given or {}):
        return net, None
    strides = pooling_strides(spacing, len(net["channels"]) - 1)
    if all(t == 2 for level in strides for t in level):
        return net, None
    kept = [ax for ax in range(3) if strides[0][ax] == 1]
    note = (f"anisotropic grid: axis {', '.join(map(str, kept))} is not pooled until the others' spacing nears it "
            f"(strides {strides}, nnU-Net's rule)")
    return network_config({**net, "strides": strides}), note


def pooling_cost(net: dict[str, Any]) -> float:
    """Compute per input voxel of ``net`` against the same network pooling every axis at every
    level: convolutions cost about (voxels at a level) x (its channels)², and a level that halves
    fewer axes keeps more voxels. 1.0 without ``strides``; (0.8, 0.8, 4) mm's ``[[2, 2, 1], [2, 2, 1],
    [2, 2, 2]]`` with channels 16-128: 1.87 (measured on 2 cores: 1.6x the seconds per step)."""
    if net.get("strides") is None or "channels" not in net:
        return 1.0
    channels = [float(c) for c in net["channels"]]

    def cost(strides: Sequence[Sequence[int]]) -> float:
        total, shrink = channels[0] ** 2, 1.0
        for ch, level in zip(channels[1:], strides, strict=True):
            shrink *= float(np.prod(level))
            total += ch * ch / shrink
        return total

    return cost(net["strides"]) / cost([[2, 2, 2]] * (len(channels) - 1))


def patch_for(
    shape: Sequence[int], spacing: Sequence[float], divisor: int | Sequence[int], budget: int
) -> tuple[tuple[int, int, int], bool]:
    """The median ``shape`` rounded up to ``divisor`` (each axis at most `MAX_PATCH_AXIS`) if it fits
    ``budget`` voxels; else nnU-Net's rule, within the budget: a patch as long in millimetres on
    every axis (voxels in proportion to 1 / ``spacing``), clipped to that shape, the budget an
    axis cannot use (the image is shorter) going to the others, rounded down to ``divisor``, then
    grown a ``divisor`` at a time on its physically shortest axis while it fits. On an anisotropic
    grid (5 mm slices, 0.8 mm in plane) the slice axis then gets few voxels but as many
    millimetres as the others -- a patch shaped like the image would give it ``divisor`` slices.
    ``divisor`` may differ per axis (a network that does not pool every axis). Returns ``(patch, capped)``."""
    sp = np.asarray(spacing, dtype=float)
    div = np.array([divisor] * 3 if isinstance(divisor, int) else list(divisor), dtype=float)
    full = np.array([min(MAX_PATCH_AXIS, max(d, math.ceil(s / d) * d)) for s, d in zip(shape, div, strict=True)], dtype=float)
    if float(np.prod(full)) <= budget:
        return (int(full[0]), int(full[1]), int(full[2])), False
    want = np.zeros(3)
    free = np.ones(3, dtype=bool)  # axes not yet clipped to the image
    for _ in range(3):
        room = budget / float(np.prod(full[~free]))
        scale = (room / float(np.prod(1.0 / sp[free]))) ** (1.0 / int(free.sum()))
        want[free] = scale / sp[free]
        over = free & (want >= full)
        if not over.any():
            break
        want[over] = full[over]
        free &= ~over
        if not free.any():
            break
    patch = np.maximum(div, np.floor(np.minimum(want, full) / div) * div)
    while True:  # grow the physically shortest axis that still fits (ties: the first)
        grown = False
        for ax in np.argsort(patch * sp, kind="stable"):
            if patch[ax] + div[ax] <= full[ax] and float(np.prod(patch)) / patch[ax] * (patch[ax] + div[ax]) <= budget:
                patch[ax] += div[ax]
                grown = True
                break
        if not grown:
            break
    return (int(patch[0]), int(patch[1]), int(patch[2])), True


def resampled_median_shape(fp: Fingerprint, spacing: Sequence[float]) -> tuple[int, int, int]:
    """The median image shape (voxels) once every image is resampled to ``spacing`` (mm)."""
    shapes = []
    for shp, sp in zip(fp.shapes, fp.spacings, strict=True):
        f = zoom_factors(sp, spacing)
        shapes.append(resampled_shape(shp, f) if f else tuple(shp))
    med = np.median(np.array(shapes), axis=0)
    return (int(med[0]), int(med[1]), int(med[2]))


def context_spacing(
    fp: Fingerprint, spacing: Sequence[float], divisor: int | Sequence[int], budget: int
) -> tuple[tuple[float, float, float], str | None]:
    """A coarser grid where the patch that ``budget`` allows does not see the largest structure
    whole (nnU-Net's 3d_lowres idea, decided by the structures themselves).

    While the patch is capped and its field of view (mm) is shorter than the median bounding box
    of the largest class (clipped to the image) on some axis, the spacing grows by `GRID_STEP` --
    the axes finer than half the coarsest first, as nnU-Net grows its low-resolution grid, then all
    -- as long as the thinnest class keeps `MIN_VOXELS_ACROSS` voxels across its thickness (the
    lower quartile over the cases).
    A model that sees only part of a large organ cannot tell it from tissue that looks alike; a
    thin structure on a coarse grid is lost. Returns ``(spacing, note)``: ``spacing`` unchanged and
    no note where nothing calls for it (a patch that holds the image, no labels, a thin structure)."""
    if not fp.class_voxels or not fp.class_extent_mm or not fp.class_thickness_mm:
        return (float(spacing[0]), float(spacing[1]), float(spacing[2])), None
    largest = max(fp.class_voxels, key=lambda v: fp.class_voxels[v])
    want = np.array(fp.class_extent_mm.get(largest, (0.0, 0.0, 0.0)), dtype=float)
    thin_class = min(fp.class_thickness_mm, key=lambda v: fp.class_thickness_mm[v])
    finest_allowed = fp.class_thickness_mm[thin_class] / MIN_VOXELS_ACROSS
    start = np.asarray(spacing, dtype=float)

    def fits(sp: np.ndarray) -> tuple[bool, tuple[int, int, int], np.ndarray]:
        med = resampled_median_shape(fp, sp.tolist())
        patch, capped = patch_for(med, sp.tolist(), divisor, budget)
        need = np.minimum(want, np.asarray(med) * sp)
        return (not capped) or bool(np.all(np.asarray(patch) * sp >= need)), patch, need

    ok, patch0, need = fits(start)
    if ok:
        return (float(start[0]), float(start[1]), float(start[2])), None
    sp = start.copy()
    while True:
        grow = sp < sp.max() / 2.0
        nxt = sp * np.where(grow if grow.any() else np.ones(3, dtype=bool), GRID_STEP, 1.0)
        if float(nxt.min()) > finest_allowed:
            break
        sp = nxt
        ok, _, _ = fits(sp)
        if ok:
            break
    thin = f"class {thin_class}, {fp.class_thickness_mm[thin_class]:.1f} mm thick"
    big = f"class {largest}, {_fmt3(np.round(need).tolist())} mm"
    if np.allclose(sp, start):
        return (float(start[0]), float(start[1]), float(start[2])), (
            f"the patch ({_fmt3((np.asarray(patch0) * start).round().tolist())} mm) does not hold the largest structure ({big}), "
            f"but the thinnest ({thin}) needs {MIN_VOXELS_ACROSS} voxels across: the grid stays")
    sp = np.round(sp, 3)
    _, patch, _ = fits(sp)
    seen = f"the patch ({_fmt3((np.asarray(patch) * sp).round().tolist())} mm) holds the largest structure ({big})"
    why = (f"{seen}; the thinnest ({thin}) keeps {MIN_VOXELS_ACROSS}+ voxels across" if ok else
           f"as coarse as the thinnest structure ({thin}) allows with {MIN_VOXELS_ACROSS} voxels across; "
           f"{seen.replace('holds', 'holds most of')}")
    return (float(sp[0]), float(sp[1]), float(sp[2])), (
        f"coarser grid {_fmt3(sp.tolist())} mm (was {_fmt3(start.round(3).tolist())}), nnU-Net's low-resolution idea: {why}")


def ct_intensity(fp: Fingerprint) -> dict[str, Any] | None:
    """nnU-Net's CT normalisation as a ``range`` map: clip to the foreground 0.5–99.5 percentiles,
    z-score with the foreground mean/sd (None without foreground statistics)."""
    if fp.foreground_percentiles is None or fp.foreground_mean is None or not fp.foreground_sd:
        return None
    lo, hi = fp.foreground_percentiles
    m, s = fp.foreground_mean, max(fp.foreground_sd, 1e-6)
    return {"kind": "range", "a_min": lo, "a_max": hi, "b_min": (lo - m) / s, "b_max": (hi - m) / s, "clip": True}


def make_plan(
    fp: Fingerprint,
    *,
    device: str = "cpu",
    arch: str = "unet",
    network: dict[str, Any] | None = None,
    batch_size: int = 2,
    patch_voxels: int | None = None,
    spacing: Sequence[float] | None = None,
) -> Plan:
    """The plan for ``fp`` on ``device`` (not calibrated: see `calibrate`); ``spacing`` (mm) replaces
    the data's target spacing where the user has chosen the grid -- pooling and patch follow it."""
    base = network_config(network, arch)
    given = spacing is not None
    if spacing is None:
        grid, note = target_spacing(fp)
    else:
        grid, note = (float(spacing[0]), float(spacing[1]), float(spacing[2])), f"spacing {_fmt3(spacing)} mm, as configured"
    notes = [note] if note else []
    full = patch_voxels or (GPU_PATCH_VOXELS if device.startswith("cuda") else CPU_PATCH_VOXELS)
    net, budget, net_notes = _grid_network(base, grid, network, device, full)
    if not given:  # the user's spacing is used as given
        coarse, grid_note = context_spacing(fp, grid, size_divisor(net), budget)
        if grid_note:
            notes.append(grid_note)
        if coarse != grid:
            grid = coarse
            net, budget, net_notes = _grid_network(base, grid, network, device, full)
    notes += net_notes
    spacing = grid
    div = size_divisor(net)
    med_shape = resampled_median_shape(fp, spacing)
    patch, capped = patch_for(med_shape, spacing, div, budget)
    if capped:
        fov = "x".join(f"{p * s:.0f}" for p, s in zip(patch, spacing, strict=True))
        notes.append(
            f"patch capped at {budget} voxels for {device}: {'x'.join(map(str, patch))} ({fov} mm) of a "
            f"{'x'.join(map(str, med_shape))} median image — less context per step, more sliding windows, "
            "affordable steps"
        )
    intensity = None
    unknown = fp.modality in ("", "UNKNOWN", "OT")  # no modality recorded: HU-like values say CT
    if fp.modality == "CT" or (unknown and fp.foreground_percentiles is not None and fp.foreground_percentiles[0] < -500):
        intensity = ct_intensity(fp)
        if intensity is not None:
            notes.append("CT: one dataset-wide window from the foreground intensities (nnU-Net's CT scheme)")
    small = [v for v, n in fp.class_voxels.items() if n < 0.001 * float(np.prod(med_shape))]
    fg_ratio = FG_RATIO_SMALL
    if capped and fp.class_voxels:
        # median voxels of the largest class on the planned grid, against the patch's voxels
        per_voxel = float(np.prod(fp.median_spacing)) / float(np.prod(spacing))
        value, voxels = max(fp.class_voxels.items(), key=lambda kv: kv[1])
        share = voxels * per_voxel / float(np.prod(patch))
        if share >= LARGE_STRUCTURE:
            fg_ratio = FG_RATIO_LARGE
            notes.append(f"large structure (class {value}: {share:.0%} of a patch): patches are centred on foreground "
                         "1 time in 3 (nnU-Net's rate), so they show what lies around it too")
    if small:
        notes.append(f"small structures (classes {small}: < 0.1 % of the image)"
                     + (": patches are centred on foreground 2 times in 3" if fg_ratio == FG_RATIO_SMALL else ""))
    return Plan(spacing, patch, batch_size, intensity, device, net, None, med_shape, tuple(notes), fg_ratio=fg_ratio)


def _grid_network(
    net: dict[str, Any], spacing: Sequence[float], given: dict[str, Any] | None, device: str, budget: int
) -> tuple[dict[str, Any], int, list[str]]:
    """The network for ``spacing`` on ``device`` (nnU-Net's pooling on a GPU, see `pooled_network`) and
    the patch budget left for it, with the notes that say so."""
    notes = []
    pooled, pool_note = pooled_network(net, spacing, given)
    if pool_note and device.startswith("cuda"):
        net = pooled
        notes.append(pool_note)
    elif pool_note:
        notes.append(f"anisotropic grid: every axis is pooled on {device} (nnU-Net's rule would use strides "
                     f"{pooled['strides']}, 2.4x the time of a whole-volume pass on a CPU; set network strides to choose)")
    dearer = pooling_cost(net)
    if dearer > 1.0:  # levels that do not pool all axes hold more voxels: the same step time buys fewer
        budget = int(budget / dearer)
        notes.append(f"a network that pools fewer axes costs {dearer:.2f}x as much per voxel: the patch budget is "
                     f"{budget} voxels, for the step time of a fully pooled one")
    return net, budget, notes


def calibrate(plan: Plan, image_channels: int, num_classes: int, steps: int = 3, threads: int | None = None) -> Plan:
    """Time ``steps`` optimiser steps (after one warm-up) of the planned network on random input;
    returns the plan with ``seconds_per_step`` set. Click simulation adds forward passes on half the
    steps (about a third of a step each, 1–3 of them): that share is added to the measured time."""
    import torch

    from segloop.ml.networks import build_network

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(plan.device)
        in_ch = image_channels + num_classes  # image + guidance
        net = build_network(plan.network, in_ch, num_classes).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.randn(plan.batch_size, in_ch, *plan.patch_size, device=dev)
        y = torch.randint(0, num_classes, (plan.batch_size, *plan.patch_size), device=dev)
        loss_fn = torch.nn.CrossEntropyLoss()
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = net(x)
            if isinstance(out, (list, tuple)):
                out = out[0]
            loss_fn(out, y).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        step = float(np.median(times)) * (1.0 + 0.5 * 2.0 / 3.0)  # + click simulation (mean 2 forwards on half)
    finally:
        torch.set_num_threads(old)
    from dataclasses import replace

    return replace(plan, seconds_per_step=step)
