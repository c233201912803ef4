"""Training's settings and progress (`segloop.ml.training` runs them): `TrainConfig`,
`TrainProgress`, `TrainingCancelled`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from segloop.ml.distributed import batch_per_rank
from segloop.ml.networks import describe_divisor, network_config, size_divisor


def mirror_axes(flip_axes: Any) -> tuple[int, ...]:
    """The axes an automatic result is mirrored along (test-time mirroring): those training flipped."""
    return tuple(sorted({int(a) for a in flip_axes or ()} & {0, 1, 2}))


class TrainingCancelled(Exception):
    """Raised by `train` when its ``cancel`` event is set; nothing was written to the store."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all JSON-friendly; `from_dict` / `to_dict`)."""

    arch: str = "unet"
    network: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    steps_per_epoch: int | None = None  # None: ceil(train images / batch size)
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_split: float = 0.2
    val_every: int = 1
    val_budget: float = 0.15  # at most this share of the run's time goes to validation (the last one excepted)
    val_max_images: int | None = 8  # validate on at most this many of the validation images (a fixed subset)
    patch_size: list[int] | None = None  # None: from the training images' median shape
    spacing: list[float] | None = None  # None: median spacing of the training images
    fg_ratio: float | None = None  # share of patches centred on foreground; None: from the data's plan (2/3 or 1/3)
    click_prob: float = 0.5
    max_click_iters: int = 3
    guidance_sigma: float | list[float] = 3.0  # click blob width in voxels of the model grid; or one per axis (x, y, z)
    mask_input: bool = False  # also feed the previous mask (interactive refinement); not benchmarked yet
    box_input: bool = False  # also take box prompts (one channel per foreground class), simulated in training
    box_prob: float = 0.5  # box_input: each class present in an interactive batch's patch gets its box this often
    intensity: dict[str, Any] | str | None = "auto"  # "auto": from the data's plan; None: robust z-score; or a ModelSpec intensity
    keep_largest: str | list[int] = "auto"  # "auto": from the training labels' topology; or class values (0: foreground)
    class_weights: list[float] | None = None  # focal-loss weight per class (background first)
    focal_weight: float = 1.0
    flip_axes: list[int] = field(default_factory=lambda: [0])
    seed: int = 0
    num_threads: int | None = None  # None: min(2, CPU count)
    max_minutes: float | None = None  # stop (and keep the best state) after this wall time
    log_dir: str | None = None  # TensorBoard logs, when tensorboard is installed
    workers: int = 1  # ranks of a distributed training (jobs on Ray); batch_size is the global batch

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"bad training config: {name} {why} (got {getattr(self, name)!r})")

        network_config(self.network, self.arch)  # raises ValueError for unknown arch / params
        for name in ("epochs", "batch_size", "val_every", "max_click_iters", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        if self.workers > 1:
            try:
                batch_per_rank(self.batch_size, self.workers)
            except ValueError as exc:
                bad("batch_size", str(exc))
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1):
            bad("steps_per_epoch", "must be a positive integer or null")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            bad("lr", "must be in (0, 1)")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            bad("weight_decay", "must be >= 0")
        if not (isinstance(self.val_split, (int, float)) and 0 <= self.val_split < 1):
            bad("val_split", "must be in [0, 1)")
        if not (isinstance(self.val_budget, (int, float)) and 0 < self.val_budget <= 1):
            bad("val_budget", "must be in (0, 1]")
        if self.val_max_images is not None and (
            not isinstance(self.val_max_images, int) or isinstance(self.val_max_images, bool) or self.val_max_images < 1
        ):
            bad("val_max_images", "must be a positive integer or null")
        for name in ("fg_ratio", "click_prob", "box_prob"):
            v = getattr(self, name)
            if name == "fg_ratio" and v is None:
                continue
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                bad(name, "must be in [0, 1]")
        from segloop.ml.modelspec import check_intensity, parse_sigma

        try:
            parse_sigma(self.guidance_sigma)
        except ValueError:
            several = isinstance(self.guidance_sigma, (list, tuple))
            bad("guidance_sigma", "must be > 0, one number or three (x, y, z)" if several else "must be > 0")
        if self.patch_size is not None and (
            len(self.patch_size) != 3 or not all(isinstance(p, int) and p > 0 for p in self.patch_size)
        ):
            bad("patch_size", "must be three positive integers")
        if self.patch_size is not None:
            div = size_divisor(network_config(self.network, self.arch))
            if any(p % d for p, d in zip(self.patch_size, div, strict=True)):
                bad("patch_size", f"must be multiples of {describe_divisor(div)} for this network")
        if self.spacing is not None and (len(self.spacing) != 3 or not all(float(s) > 0 for s in self.spacing)):
            bad("spacing", "must be three positive numbers (mm)")
        if self.class_weights is not None and not all(float(w) >= 0 for w in self.class_weights):
            bad("class_weights", "must be non-negative")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            bad("flip_axes", "must list axes among 0, 1, 2")
        if self.num_threads is not None and self.num_threads < 1:
            bad("num_threads", "must be positive")
        if self.max_minutes is not None and not self.max_minutes > 0:
            bad("max_minutes", "must be > 0")
        if self.keep_largest != "auto" and not (
            isinstance(self.keep_largest, list)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in self.keep_largest)
        ):
            bad("keep_largest", "must be 'auto' or a list of class values (0: the foreground as a whole)")
        if self.intensity != "auto":
            try:
                check_intensity(self.intensity)
            except ValueError as exc:
                bad("intensity", f"is not 'auto', null or an intensity config: {exc}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"bad training config: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad training config: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress:
    """One progress report. ``step``/``steps`` count optimiser steps over the whole run."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None
    val_dice: dict[str, float] | None
    eta_seconds: float | None
    message: str = ""
    fraction: float | None = None  # share of the run done: max(step / steps, elapsed / time limit), 0..1


ProgressCallback = Callable[[TrainProgress], None]

