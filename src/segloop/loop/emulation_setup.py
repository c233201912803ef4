"""Settings, checks and splits of an emulation (`segloop.loop.emulate`): `EmulationConfig` (the
CLI's options, pinned in ``OUT/config.json``), `plan` (every check before any work; the fixed
splits) and the `Plan` it returns with each training's budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segloop.loop.annotator import FINISH_MODES
from segloop.loop.diagnostic import DEFAULT_DIAGNOSTIC, arm_strategy, check_scorers

MODEL = "emulated"
FULL = "full"
Log = Callable[[str], None]

# The small-start preset (the defaults): see the module docstring and docs/emulation/README.md.
PRESET_INITIAL = "2"
PRESET_PER_ROUND = 4  # at most; fewer on a small pool, so the curve has PRESET_MIN_ROUNDS points
PRESET_MIN_ROUNDS = 3
PRESET_TARGET_FRACTION = 0.3  # rounds (when not given): until this fraction of the pool is labelled
PRESET_POOL_SIZE = 60
PRESET_STEPS_PER_IMAGE = 15
PRESET_MIN_STEPS = 150
PRESET_PRETRAIN_FACTOR = 2  # pre-training's floor: this many times min_steps
STEP_KEYS = ("pretrain_steps", "steps_per_round", "full_steps")
# Settings that change no round's result: a run resumes whatever they are.
UNPINNED_KEYS = ("device", "noc_images", "noc_clicks", "estimate", "max_minutes")
# Optional settings left out of the pinned config while unset (runs pinned before they existed still resume).
OPTIONAL_KEYS = (*STEP_KEYS, "rounds", "pool_size", "steps_per_image", "min_steps", "minutes_per_round",
                 "pretrain_minutes", "full_minutes", "diagnose_images")


class EmulationError(ValueError):
    """Bad input or settings for an emulation; raised before any work starts."""


@dataclass
class EmulationConfig:
    """Settings of one emulation (JSON-friendly; pinned in ``OUT/config.json``).

    ``initial`` is a fraction of the pool (``"10%"``, ``0.1``) or a count (``"12"``, ``12``): the
    images pre-trained on. ``validation`` more pool images get reference labels and are held out
    of training to decide whether a fine-tuned version replaces the current one (0: no held-out
    images; the gate then has nothing to compare on and accepts). Both count as labelled.
    ``rounds`` None: as many as reach ``target_fraction`` of the pool. ``pool_size``: use at most
    this many pool images (the test split is still ``test_fraction`` of every case).
    ``train`` overrides `segloop.ml.training.TrainConfig` fields for every training.

    Training budgets, per phase, first match wins: fixed steps (``pretrain_steps``,
    ``steps_per_round``, ``full_steps``); minutes of wall time (``pretrain_minutes``,
    ``minutes_per_round``, ``full_minutes``); else steps proportional to the images trained on,
    ``max(min_steps, steps_per_image x images)`` (pre-training's floor ``PRESET_PRETRAIN_FACTOR x
    min_steps``; ``full``: the total an active-learning arm gets, pre-training included). Steps
    are the same training whatever else runs on the machine (a wall budget buys fewer steps on a
    busy machine). `step_budgets` prints them.
    """

    dataset: str
    out: str
    strategy: str = "typiclust"
    compare: list[str] = field(default_factory=list)
    initial: str = PRESET_INITIAL
    per_round: int | None = None  # None: derived from the pool (`derive_per_round`)
    rounds: int | None = None  # None: until target_fraction of the pool is labelled
    target_fraction: float = PRESET_TARGET_FRACTION
    pool_size: int | None = PRESET_POOL_SIZE
    validation: int = 0
    clicks: int = 3
    seed: int = 0
    test_fraction: float = 0.2
    fine_tune: bool = True
    minutes_per_round: float | None = None  # set: a wall-time budget per round
    pretrain_minutes: float | None = None  # set: a wall-time budget for pre-training
    full_minutes: float | None = None  # set: a wall-time budget for the full arm
    pretrain_steps: int | None = None  # set: this many steps instead of pretrain_minutes
    steps_per_round: int | None = None  # set: this many steps per round instead of minutes_per_round
    full_steps: int | None = None  # set: this many steps instead of full_minutes
    steps_per_image: int | None = PRESET_STEPS_PER_IMAGE
    min_steps: int | None = PRESET_MIN_STEPS
    diagnose: list[str] = field(default_factory=lambda: list(DEFAULT_DIAGNOSTIC))
    diagnose_images: int | None = None  # pool images the diagnostic scores per round (0: none; None: fitted to the cost)
    train: dict[str, Any] = field(default_factory=dict)
    satisfied_dice: float | None = 0.95
    finish: str = "brush"  # brush: residual errors brushed away (saved = reference); clicks: the clicked result is saved
    stroke_tolerance: int = 1  # voxels of boundary disagreement the brushing user leaves (effort model)
    diversity: float = 0.0
    max_cases: int | None = None  # use only the first N cases (sorted by name) for quick checks
    device: str | None = None
    noc_images: int | None = None  # test images of each arm's final click figures (0: none; None: fitted to the cost)
    noc_clicks: int = 20  # clicks per class in those figures (NoC's cap)
    estimate: bool = True  # measure the unit costs and print the run's estimated time before starting
    max_minutes: float | None = None  # refuse a new run whose estimate exceeds this (None: only warn above 90)

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(a.strip().lower() for a in (self.compare or [self.strategy]) if a.strip()))

    def pinned(self) -> dict[str, Any]:
        """The settings a resumed run must share (everything but the device and the click figures,
        which measure a finished arm and change none of its rounds)."""
        d = asdict(self)
        for key in UNPINNED_KEYS:
            d.pop(key, None)
        for key in OPTIONAL_KEYS:  # unset: left out, so runs pinned before these options existed still resume
            if d.get(key) is None:
                d.pop(key, None)
        d["dataset"] = str(Path(self.dataset).resolve())
        d["out"] = str(Path(self.out).resolve())
        return d


@dataclass
class Plan:
    """Validated inputs: the cases, the splits (case names) and the label schema."""

    config: EmulationConfig
    schema: Any
    images: dict[str, tuple[Path, ...]]  # a case's image file(s): one per channel in nnU-Net's layout
    labels: dict[str, Path]
    test: list[str]
    pool: list[str]
    initial: list[str]
    validation: list[str]
    rounds: int = 0

    @property
    def class_names(self) -> dict[int, str]:
        return {c.value: c.name for c in self.schema.foreground}

    @property
    def per_round(self) -> int:
        """Images annotated per round (given, or derived from the pool by `plan`)."""
        assert self.config.per_round is not None, "plan() resolves per_round"
        return self.config.per_round

    def labelled(self, rnd: int) -> int:
        """Pool images with a label after round ``rnd`` (validation images included)."""
        return len(self.initial) + len(self.validation) + rnd * self.per_round

    def budget(self, phase: str, rnd: int = 0) -> tuple[float | None, int | None]:
        """``(minutes, steps)`` of one training: ``phase`` is ``pretrain``, ``round`` (round ``rnd``) or
        ``full`` (see `EmulationConfig`); both None: the training config's epochs decide."""
        cfg = self.config
        fixed = {"pretrain": cfg.pretrain_steps, "round": cfg.steps_per_round, "full": cfg.full_steps}[phase]
        if fixed is not None:
            return None, int(fixed)
        minutes = {"pretrain": cfg.pretrain_minutes, "round": cfg.minutes_per_round, "full": cfg.full_minutes}[phase]
        if minutes is None and phase != "round" and cfg.minutes_per_round is not None:
            minutes = 3 * cfg.minutes_per_round
        if minutes is not None:
            return float(minutes), None
        if cfg.steps_per_image is None:
            return None, None
        floor = int(cfg.min_steps or 1)
        if phase == "pretrain":
            return None, max(PRESET_PRETRAIN_FACTOR * floor, cfg.steps_per_image * len(self.initial))
        if phase == "round":
            return None, max(floor, cfg.steps_per_image * (self.labelled(rnd) - len(self.validation)))
        parts = [self.budget("pretrain"), *(self.budget("round", r) for r in range(1, self.rounds + 1))]
        if all(st is not None for _, st in parts):
            return None, int(sum(st or 0 for _, st in parts))  # the same training as an active-learning arm
        return None, max(floor, cfg.steps_per_image * (len(self.pool) - len(self.validation)))

    def budgets(self) -> dict[str, Any]:
        """Every training's budget, for the log and the report."""
        def one(phase: str, rnd: int = 0) -> dict[str, Any]:
            minutes, steps = self.budget(phase, rnd)
            return {"minutes": minutes, "steps": steps}

        return {"pretrain": one("pretrain"), "rounds": [one("round", r) for r in range(1, self.rounds + 1)],
                "full": one("full")}


def describe_budgets(budgets: dict[str, Any]) -> str:
    """One line: ``pre-training 300 steps; rounds 150, 150, ...; full 1080 steps``."""
    def fmt(b: dict[str, Any]) -> str:
        if b["steps"] is not None:
            return f"{b['steps']}"
        return f"{b['minutes']:g} min" if b["minutes"] is not None else "config epochs"

    rounds = ", ".join(fmt(b) for b in budgets["rounds"]) or "none"
    unit = " steps" if budgets["pretrain"]["steps"] is not None else ""
    return f"training budgets: pre-training {fmt(budgets['pretrain'])}{unit}; rounds {rounds}; full {fmt(budgets['full'])}"


def parse_initial(text: str | float | int, pool_size: int) -> int:
    """Number of initially labelled pool images from ``"10%"``, ``0.1`` or ``"12"``."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            return int(math.ceil(float(s[:-1]) / 100.0 * pool_size - 1e-9))
        v = float(s)
    except ValueError:
        raise EmulationError(f"--initial must be a percentage (10%), a fraction (0.1) or a count (12), got {text!r}") from None
    if 0 < v < 1:
        return int(math.ceil(v * pool_size - 1e-9))
    if v != int(v) or v < 0:
        raise EmulationError(f"--initial must be a percentage, a fraction in (0, 1) or a whole count, got {text!r}")
    return int(v)


def build_train_config(config: EmulationConfig, minutes: float | None, seed: int, steps: int | None = None) -> Any:
    """The `TrainConfig` of one training: ``steps`` (fixed optimiser steps, no time limit) when
    given, else ``minutes`` of wall time, else the training config's own epochs."""
    from segloop.ml.training import TrainConfig

    data: dict[str, Any] = {"val_split": 0.0, **config.train, "seed": seed}
    if steps is not None:
        data.update(epochs=1, steps_per_epoch=int(steps), max_minutes=None)
    elif minutes is not None:
        data["max_minutes"] = minutes
        data.setdefault("epochs", 100_000)  # the time budget decides
    try:
        return TrainConfig.from_dict(data)
    except ValueError as exc:
        raise EmulationError(str(exc)) from exc


def derive_per_round(pool: int, start: int, target_fraction: float, rounds: int | None = None) -> int:
    """Images per round when not given: at most `PRESET_PER_ROUND`, and few enough that the
    rounds up to ``target_fraction`` of the pool (or the ``rounds`` asked for) are at least
    `PRESET_MIN_ROUNDS` — a 16-image pool at 4 per round reached 30 % in one round, a curve of two
    points that no strategy comparison can read. Task04's 60-image pool keeps 4."""
    n_rounds = max(PRESET_MIN_ROUNDS, rounds or 0)
    room = (pool - start) if rounds else (target_fraction * pool - start)
    return int(min(PRESET_PER_ROUND, max(1, math.floor(room / n_rounds + 1e-9))))


def plan(config: EmulationConfig, log: Log | None = None) -> Plan:
    """Check everything and fix the splits (reads label files, writes nothing).

    Raises:
        EmulationError: any problem, with a message naming it.
    """
    import nibabel as nib

    from segloop.store.errors import ValidationError
    from segloop.store.msd import open_msd

    arms = config.arms
    if not arms:
        raise EmulationError("no strategy to emulate")
    for arm in arms:
        if arm != FULL:
            try:
                arm_strategy(arm)
            except ValueError as exc:
                raise EmulationError(f"{exc} (or 'full' in --compare)") from exc
    for name, value, low in (("--per-round", config.per_round, 1), ("--rounds", config.rounds, 0), ("--clicks", config.clicks, 0),
                             ("--validation", config.validation, 0), ("--pool-size", config.pool_size, 1),
                             ("--steps-per-image", config.steps_per_image, 1), ("--min-steps", config.min_steps, 1),
                             ("--diagnose-images", config.diagnose_images, 0), ("--noc-images", config.noc_images, 0),
                             ("--noc-clicks", config.noc_clicks, 1)):
        if value is None and name not in ("--clicks", "--validation", "--noc-clicks"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EmulationError(f"{name} must be an integer >= {low}, got {value!r}")
    if config.finish not in FINISH_MODES:
        raise EmulationError(f"--finish must be one of {', '.join(FINISH_MODES)}, got {config.finish!r}")
    if config.stroke_tolerance < 0:
        raise EmulationError(f"--stroke-tolerance must be >= 0 voxels, got {config.stroke_tolerance}")
    if not 0 < config.target_fraction <= 1:
        raise EmulationError(f"--target-fraction must be in (0, 1], got {config.target_fraction}")
    try:
        check_scorers(config.diagnose)
    except ValueError as exc:
        raise EmulationError(f"--diagnose: {exc}") from exc
    if not 0 < config.test_fraction < 1:
        raise EmulationError(f"--test-fraction must be in (0, 1), got {config.test_fraction}")
    for name, minutes in (("--minutes-per-round", config.minutes_per_round), ("--pretrain-minutes", config.pretrain_minutes),
                          ("--full-minutes", config.full_minutes)):
        if minutes is not None and not minutes > 0:
            raise EmulationError(f"{name} must be > 0, got {minutes}")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise EmulationError(f"--max-minutes must be > 0, got {config.max_minutes}")
    for name, steps in (("--pretrain-steps", config.pretrain_steps), ("--steps-per-round", config.steps_per_round),
                        ("--full-steps", config.full_steps)):
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise EmulationError(f"{name} must be an integer >= 1, got {steps!r}")
    build_train_config(config, config.minutes_per_round, config.seed)  # a bad --train-config fails here

    root = Path(config.dataset)
    if not root.is_dir():
        raise EmulationError(f"{root}: dataset folder does not exist")
    try:
        ds = open_msd(root, require_labels=True)
    except ValidationError as exc:
        raise EmulationError(str(exc)) from exc
    cases = sorted(ds.cases, key=lambda c: c.name)
    if config.max_cases is not None:
        cases = cases[: config.max_cases]
    if not ds.schema.foreground:
        raise EmulationError(f"{root / 'dataset.json'}: no foreground class in its labels")
    problems: list[str] = []
    allowed = ds.schema.values
    for case in cases:
        lab = case.label
        assert lab is not None
        try:
            b: Any = nib.load(str(lab))
            sb = b.shape[:3]
            for img in case.images:
                a: Any = nib.load(str(img))
                sa = a.shape[:3]
                if sa != sb or not np.allclose(a.affine, b.affine, atol=1e-3):
                    problems.append(f"{lab}: label grid {sb} does not match image {img.name} grid {sa} (shape or affine)")
                    break
            else:
                values = {int(v) for v in np.unique(np.asarray(b.dataobj))}
                if values - allowed:
                    problems.append(f"{lab}: label values {sorted(values - allowed)} are not in dataset.json's labels {sorted(allowed)}")
        except Exception as exc:  # unreadable file
            problems.append(f"{case.name}: cannot read image/label ({type(exc).__name__}: {exc})")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise EmulationError(problems[0] + more)

    names = [c.name for c in cases]
    order = np.random.default_rng(config.seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    n_test = max(1, int(round(len(names) * config.test_fraction)))
    test, pool = sorted(shuffled[:n_test]), shuffled[n_test:]
    if config.pool_size is not None:
        pool = pool[: config.pool_size]
    n_init = parse_initial(config.initial, len(pool))
    if n_init < 2:
        raise EmulationError(
            f"--initial {config.initial} gives {n_init} labelled image(s) of a pool of {len(pool)}: too few to train (need 2)"
        )
    start = n_init + config.validation
    if config.per_round is None:
        config = replace(config, per_round=derive_per_round(len(pool), start, config.target_fraction, config.rounds))
        if log is not None:
            log(f"{config.per_round} image(s) per round (derived from a pool of {len(pool)}; --per-round N to set it)")
    assert config.per_round is not None
    rounds = config.rounds
    if rounds is None:
        rounds = max(1, int(math.ceil((config.target_fraction * len(pool) - start) / config.per_round - 1e-9)))
    needed = start + rounds * config.per_round
    if needed > len(pool):
        raise EmulationError(
            f"the pool has {len(pool)} images: --initial ({n_init}) + --validation ({config.validation}) + --rounds x "
            f"--per-round ({rounds} x {config.per_round}) needs {needed}"
        )
    return Plan(
        config, ds.schema, {c.name: c.images for c in cases}, {c.name: c.label for c in cases if c.label is not None},
        test, pool, pool[:n_init], pool[n_init:start], rounds,
    )
