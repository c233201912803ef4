"""Emulation of the active-learning loop with a virtual user (the SAIM protocol), resumable.

Protocol on a labelled dataset in MSD layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``):

1. Checks before any work: every image has a label on the same grid with known class values;
   the strategies exist; the initial fraction leaves at least 2 training images and 1
   validation image; the pool holds enough images for ``rounds x per_round``; the training
   config is valid.
2. Fixed splits from ``seed``: the cases (sorted by name) are shuffled; the first
   ``test_fraction`` are the test split, the next ``pool_size`` the pool. The first ``initial``
   pool images get their reference labels; the next ``validation`` ones too, held out of
   training to decide whether a new version replaces the current one (`ActiveLearningLoop`).
3. Pre-training once (shared by every arm) on the initial images with reference labels.
4. Each arm (a strategy, or ``full``) has its own data folder ``OUT/arms/<arm>/data``. Each
   round: the strategy selects ``per_round`` images; the virtual user annotates each (automatic
   prediction + up to ``clicks`` clicks per class; its *result* is saved as a final revision,
   never the reference); the model is fine-tuned (or trained from scratch); the current version
   is evaluated on the test split. ``full`` trains once on every pool image's reference label.
5. After every round: ``OUT/rounds.csv``, ``OUT/report.json`` and ``OUT/curves.png`` are
   rewritten (atomically) from the finished rounds.

Load: every round records the CPU its own process used (``own_cores``: CPU seconds per wall
second) and what the rest of the machine used meanwhile (``other_cores``, from ``/proc/stat``),
so timings taken on a shared machine say how shared it was; ``OUT/sessions.json`` lists each
invocation (start, end, wall time, machine, the same CPU figures).

Defaults (`EmulationConfig`, the CLI's defaults): the *small-start preset*: a pool of at most
``PRESET_POOL_SIZE`` images (the test split stays ``test_fraction`` of every case), 2 initially
labelled, ``PRESET_PER_ROUND`` per round until ``PRESET_TARGET_FRACTION`` of the pool is labelled,
no validation images, step budgets ``max(min_steps, steps_per_image x images)`` (`Plan.budget`,
printed at the start); before each round's selection, the correlation diagnostic
(`segloop.loop.diagnostic`); each annotation's effort in minutes (`segloop.loop.effort`); see
``docs/emulation/README.md``.

Resuming: ``OUT/config.json`` pins the settings (a different setting is refused);
``OUT/arms/<arm>/rounds.json`` lists the finished rounds, which are never redone;
``OUT/arms/<arm>/round-NN.json`` records a round's selection and the annotations already saved,
so an interrupted round continues with the same images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segloop.activelearning.strategies import get_strategy
from segloop.loop.diagnostic import (
    DEFAULT_DIAGNOSTIC,
    check_scorers,
    mean_correlations,
    score_error_correlation,
)
from segloop.loop.effort import EffortModel, annotation_effort
from segloop.loop.evaluation import evaluate_pairs, overlap_per_class
from segloop.loop.statistics import labels_to_target
from segloop.store.base import Datastore

MODEL = "emulated"
FULL = "full"
Log = Callable[[str], None]

# The small-start preset (the defaults): see the module docstring and docs/emulation/README.md.
PRESET_INITIAL = "2"
PRESET_PER_ROUND = 4
PRESET_TARGET_FRACTION = 0.3  # rounds (when not given): until this fraction of the pool is labelled
PRESET_POOL_SIZE = 60
PRESET_STEPS_PER_IMAGE = 15
PRESET_MIN_STEPS = 150
PRESET_PRETRAIN_FACTOR = 2  # pre-training's floor: this many times min_steps
STEP_KEYS = ("pretrain_steps", "steps_per_round", "full_steps")
# Optional settings left out of the pinned config while unset (runs pinned before they existed still resume).
OPTIONAL_KEYS = (*STEP_KEYS, "rounds", "pool_size", "steps_per_image", "min_steps", "minutes_per_round",
                 "pretrain_minutes", "full_minutes")


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
    strategy: str = "entropy"
    compare: list[str] = field(default_factory=list)
    initial: str = PRESET_INITIAL
    per_round: int = PRESET_PER_ROUND
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
    diagnose_images: int = 20  # pool images the diagnostic scores per round (0: no diagnostic)
    train: dict[str, Any] = field(default_factory=dict)
    satisfied_dice: float | None = 0.95
    diversity: float = 0.0
    max_cases: int | None = None  # use only the first N cases (sorted by name) for quick checks
    device: str | None = None

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(a.strip().lower() for a in (self.compare or [self.strategy]) if a.strip()))

    def pinned(self) -> dict[str, Any]:
        """The settings a resumed run must share (everything but the device)."""
        d = asdict(self)
        d.pop("device", None)
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
    images: dict[str, Path]
    labels: dict[str, Path]
    test: list[str]
    pool: list[str]
    initial: list[str]
    validation: list[str]
    rounds: int = 0

    @property
    def class_names(self) -> dict[int, str]:
        return {c.value: c.name for c in self.schema.foreground}

    def labelled(self, rnd: int) -> int:
        """Pool images with a label after round ``rnd`` (validation images included)."""
        return len(self.initial) + len(self.validation) + rnd * self.config.per_round

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


# --------------------------------------------------------------------------------------------
# checks and splits


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


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
                get_strategy(arm)
            except ValueError as exc:
                raise EmulationError(f"{exc} (or 'full' in --compare)") from exc
    for name, value, low in (("--per-round", config.per_round, 1), ("--rounds", config.rounds, 0), ("--clicks", config.clicks, 0),
                             ("--validation", config.validation, 0), ("--pool-size", config.pool_size, 1),
                             ("--steps-per-image", config.steps_per_image, 1), ("--min-steps", config.min_steps, 1),
                             ("--diagnose-images", config.diagnose_images, 0)):
        if value is None and name not in ("--per-round", "--clicks", "--validation", "--diagnose-images"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EmulationError(f"{name} must be an integer >= {low}, got {value!r}")
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
    pairs = sorted(ds.pairs, key=lambda p: case_name(p[0]))
    if config.max_cases is not None:
        pairs = pairs[: config.max_cases]
    if not ds.schema.foreground:
        raise EmulationError(f"{root / 'dataset.json'}: no foreground class in its labels")
    problems: list[str] = []
    allowed = ds.schema.values
    for img, lab in pairs:
        assert lab is not None
        try:
            a: Any = nib.load(str(img))
            b: Any = nib.load(str(lab))
            sa, sb = a.shape[:3], b.shape[:3]
            if sa != sb or not np.allclose(a.affine, b.affine, atol=1e-3):
                problems.append(f"{lab}: label grid {sb} does not match image {img.name} grid {sa} (shape or affine)")
                continue
            values = {int(v) for v in np.unique(np.asarray(b.dataobj))}
            if values - allowed:
                problems.append(f"{lab}: label values {sorted(values - allowed)} are not in dataset.json's labels {sorted(allowed)}")
        except Exception as exc:  # unreadable file
            problems.append(f"{img.name}: cannot read image/label ({type(exc).__name__}: {exc})")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise EmulationError(problems[0] + more)

    names = [case_name(img) for img, _ in pairs]
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
        config, ds.schema, {case_name(i): i for i, _ in pairs}, {case_name(i): lab for i, lab in pairs if lab is not None},
        test, pool, pool[:n_init], pool[n_init:start], rounds,
    )


# --------------------------------------------------------------------------------------------
# files


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


# --------------------------------------------------------------------------------------------
# load on a shared machine


@dataclass(frozen=True)
class CpuSnapshot:
    """Wall clock, the machine's busy CPU seconds (None where ``/proc/stat`` is missing) and this process's."""

    wall: float
    machine_busy: float | None
    own: float

    @classmethod
    def now(cls) -> CpuSnapshot:
        busy: float | None = None
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
            vals = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
            busy = (sum(vals) - vals[3] - vals[4]) / float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            busy = None
        t = os.times()
        return cls(time.monotonic(), busy, t.user + t.system)


def cpu_usage(start: CpuSnapshot, end: CpuSnapshot | None = None) -> dict[str, Any]:
    """Cores used on average between two snapshots: by this process and by everything else."""
    end = end or CpuSnapshot.now()
    wall = max(end.wall - start.wall, 1e-9)
    own = (end.own - start.own) / wall
    other = None
    if start.machine_busy is not None and end.machine_busy is not None:
        other = max(0.0, (end.machine_busy - start.machine_busy) / wall - own)
    try:
        load = float(os.getloadavg()[0])
    except OSError:
        load = None
    return {"own_cores": round(own, 3), "other_cores": None if other is None else round(other, 3), "load_1min": load}


def machine_info() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}


# --------------------------------------------------------------------------------------------
# the run


class Emulation:
    """Runs (or resumes) the arms of one emulation; see the module docstring."""

    def __init__(self, config: EmulationConfig, log: Log | None = None) -> None:
        self.config = config
        self.log: Log = log or (lambda _msg: None)
        self.plan = plan(config, self.log)  # all checks before any work
        self.out = Path(config.out)
        self._refs: dict[str, np.ndarray] = {}
        self._test: list[tuple[Any, np.ndarray]] | None = None
        self._session: dict[str, Any] | None = None
        self._session_cpu: CpuSnapshot | None = None
        self._earlier_sessions: list[dict[str, Any]] = []
        self.effort = EffortModel()

    # --- helpers ------------------------------------------------------------------------------

    def reference(self, name: str) -> np.ndarray:
        from segloop.imaging.nifti import read_nifti

        if name not in self._refs:
            self._refs[name] = np.asarray(read_nifti(self.plan.labels[name]).array).astype(np.uint8)
        return self._refs[name]

    def test_pairs(self) -> list[tuple[Any, np.ndarray]]:
        from segloop.imaging.nifti import read_nifti

        if self._test is None:
            self._test = [(read_nifti(self.plan.images[n]), self.reference(n)) for n in self.plan.test]
        return self._test

    def evaluate(self, predictor: Any) -> dict[str, Any]:
        return evaluate_pairs(predictor, self.test_pairs())

    def _fill_store(self, store: Datastore, labelled: Sequence[str], names: Sequence[str]) -> None:
        from segloop.imaging.nifti import read_nifti

        store.set_schema(self.plan.schema)
        wanted = set(labelled)
        for name in names:
            rec = store.add_image(read_nifti(self.plan.images[name]), name, f"file:{self.plan.images[name].name}")
            if rec.id != name:
                raise EmulationError(f"case name {name!r} is not usable as an image id (got {rec.id!r})")
            if name in wanted:
                store.save_label(name, self.reference(name), author="reference", source="manual", status="final")

    def _fresh_store(self, folder: Path) -> Datastore:
        from segloop.store.local import open_datastore

        if folder.exists():
            shutil.rmtree(folder)  # an unfinished set-up: start it again
        return open_datastore(folder)

    # --- pre-training (shared) ------------------------------------------------------------------

    def pretrain(self) -> dict[str, Any]:
        from segloop.ml.predictor import Predictor
        from segloop.ml.training import train
        from segloop.store.local import open_datastore

        done_file = self.out / "pretrain" / "done.json"
        done = _read_json(done_file, None)
        if done is not None:
            return dict(done)
        cfg = self.config
        t0 = time.monotonic()
        cpu0 = CpuSnapshot.now()
        minutes, steps = self.plan.budget("pretrain")
        self.log(f"pre-training on {len(self.plan.initial)} initial images ({len(self.plan.validation)} more held out for validation)")
        store = self._fresh_store(self.out / "pretrain" / "data")
        self._fill_store(store, self.plan.initial, self.plan.initial)
        pairs = [(r.image_id, r.revision) for r in store.final_labels()]
        version = train(store, MODEL, build_train_config(cfg, minutes, cfg.seed, steps), revisions=pairs, device=cfg.device)
        metrics = self.evaluate(Predictor.load(store, MODEL, version.version, device=cfg.device))
        done = {"checkpoint": str(version.checkpoint), "config": version.config, "trained_on": [list(p) for p in version.trained_on],
                "train_metrics": {k: v for k, v in version.metrics.items() if k != "history"}, "test": metrics,
                "seconds": time.monotonic() - t0, "cpu": cpu_usage(cpu0)}
        _write_json(done_file, done)
        open_datastore(self.out / "pretrain" / "data").close()
        self.log(f"pre-trained: test mean Dice {metrics['mean_dice']:.3f} ({done['seconds']:.0f} s)")
        return done

    # --- arms -------------------------------------------------------------------------------------

    def arm_dir(self, arm: str) -> Path:
        return self.out / "arms" / arm

    def arm_rounds(self, arm: str) -> list[dict[str, Any]]:
        return list(_read_json(self.arm_dir(arm) / "rounds.json", []))

    def _open_arm(self, arm: str, pre: dict[str, Any]) -> Datastore:
        from segloop.store.local import open_datastore

        folder = self.arm_dir(arm)
        if (folder / "setup.json").is_file():
            return open_datastore(folder / "data")
        store = self._fresh_store(folder / "data")
        self._fill_store(store, [*self.plan.initial, *self.plan.validation], self.plan.pool)
        staged = store.staging_dir() / "pretrained.pt"
        shutil.copy(pre["checkpoint"], staged)
        store.create_model(MODEL, {"network": pre["config"]["network"], "classes": pre["config"]["classes"]})
        store.add_model_version(MODEL, staged, config=pre["config"], trained_on=[tuple(p) for p in pre["trained_on"]],
                                metrics=pre["train_metrics"])
        _write_json(folder / "setup.json", {"arm": arm})
        return store

    def diagnose(self, arm: str, rnd: int, loop: Any) -> dict[str, Any] | None:
        """The correlation diagnostic before round ``rnd``'s selection (`segloop.loop.diagnostic`), saved
        in ``OUT/arms/<arm>/diagnostic-NN.json`` (a resumed round reads it back)."""
        cfg = self.config
        if not cfg.diagnose or not cfg.diagnose_images:
            return None
        path = self.arm_dir(arm) / f"diagnostic-{rnd:02d}.json"
        done = _read_json(path, None)
        if done is not None:
            return dict(done)
        ids = loop.pool()[: cfg.diagnose_images]
        t0 = time.monotonic()
        diag = score_error_correlation(loop.predictor(), ids, loop.store.load_image, self.reference, cfg.diagnose)
        diag["model_version"] = loop.current_version
        _write_json(path, diag)
        rho = ", ".join(f"{n} {_fmt(v, 2) or '-'}" for n, v in diag["spearman"].items())
        self.log(f"[{arm}] round {rnd}: score-error rank correlation on {diag['images']} pool images: {rho} "
                 f"({time.monotonic() - t0:.0f} s)")
        return diag

    @staticmethod
    def _steps(store: Datastore, version: int | None) -> int | None:
        """Optimiser steps of a trained version (how much a minute bought on this machine)."""
        if version is None:
            return None
        try:
            return int(store.get_model(MODEL).version(version).metrics.get("steps") or 0) or None
        except Exception:  # informative only
            return None

    def _record(self, arm: str, rnd: int, labelled: int, test: dict[str, Any], **extra: Any) -> dict[str, Any]:
        names = list(self.plan.class_names.values())
        return {
            "arm": arm, "round": rnd, "labelled": labelled, "labelled_fraction": labelled / len(self.plan.pool),
            "test_dice": {n: test["mean"][n]["dice"] for n in names}, "test_iou": {n: test["mean"][n]["iou"] for n in names},
            "test_mean_dice": test["mean_dice"], "test_mean_iou": test["mean_iou"], **extra,
        }

    def run_arm(self, arm: str, pre: dict[str, Any]) -> list[dict[str, Any]]:
        if arm == FULL:
            return self.run_full()
        from segloop.loop.active_loop import ActiveLearningLoop
        from segloop.loop.annotator import VirtualAnnotator

        cfg = self.config
        folder = self.arm_dir(arm)
        rounds = self.arm_rounds(arm)
        if not rounds:
            rounds = [self._record(arm, 0, self.plan.labelled(0), pre["test"], clicks=0, clicks_total=0,
                                   annotation_dice=None, annotation_dice_per_class=None, model_version=1,
                                   accepted=True, train_seconds=pre["seconds"], seconds=pre["seconds"], selected=[],
                                   steps=(pre.get("train_metrics") or {}).get("steps"), cpu=pre.get("cpu"))]
        if len(rounds) > self.plan.rounds:
            return rounds
        store = self._open_arm(arm, pre)
        _write_json(folder / "rounds.json", rounds)
        self.write_outputs()
        strategy = get_strategy(arm, seed=cfg.seed) if "seed" in get_strategy(arm).params else get_strategy(arm)
        user = VirtualAnnotator(self.reference, cfg.clicks, cfg.satisfied_dice, seed=cfg.seed)
        names = self.plan.class_names
        for rnd in range(len(rounds), self.plan.rounds + 1):
            t0 = time.monotonic()
            cpu0 = CpuSnapshot.now()
            minutes, steps = self.plan.budget("round", rnd)
            loop = ActiveLearningLoop(
                store, MODEL, strategy, user, train_config=build_train_config(cfg, minutes, cfg.seed + rnd, steps),
                retrain_every=cfg.per_round, fine_tune=cfg.fine_tune, validation_ids=self.plan.validation,
                diversity=cfg.diversity, auto_train=False, device=cfg.device,
            )
            loop.set_version(int(rounds[-1]["model_version"]))
            diag = self.diagnose(arm, rnd, loop)
            sel_file = folder / f"round-{rnd:02d}.json"
            sel = _read_json(sel_file, None)
            earlier = float(sel.get("select_seconds", 0.0)) if sel is not None else 0.0  # selection time of a resumed round
            if sel is None:
                ranking = loop.select(cfg.per_round)
                sel = {"selected": ranking.ids(), "scores": ranking.scores(), "select_seconds": ranking.seconds, "annotations": {}}
                _write_json(sel_file, sel)
                self.log(f"[{arm}] round {rnd}: selected {', '.join(sel['selected'])} ({ranking.seconds:.1f} s)")
            for image_id in sel["selected"]:
                if image_id in sel["annotations"]:
                    continue
                if store.get_image(image_id).label_state == "final":  # saved before an interruption
                    ann_clicks: int | None = None
                else:
                    ann_clicks = loop.annotate(image_id).clicks
                saved = store.load_label(image_id).array
                overlap = overlap_per_class(saved, self.reference(image_id), names)
                effort = annotation_effort(self.effort, ann_clicks or 0, saved, self.reference(image_id), list(names))
                sel["annotations"][image_id] = {"clicks": ann_clicks, "dice": {n: v["dice"] for n, v in overlap.items()},
                                                "effort": effort}
                _write_json(sel_file, sel)
            t_train = time.monotonic()
            loop.start_training(force=True)
            outcome = loop.wait_for_training()
            if outcome is None or outcome.error is not None:
                raise RuntimeError(f"[{arm}] round {rnd}: training failed: {outcome.error if outcome else 'not started'}")
            train_seconds = time.monotonic() - t_train
            test = self.evaluate(loop.predictor())
            anns = [sel["annotations"][i] for i in sel["selected"]]
            clicks = int(sum(a["clicks"] or 0 for a in anns))
            per_class = {n: float(np.mean([a["dice"][n] for a in anns])) for n in names.values()}
            labelled = self.plan.labelled(rnd)
            minutes_each = [float(a["effort"]["minutes"]) for a in anns if a.get("effort")]
            manual_each = [float(a["effort"]["manual_minutes"]) for a in anns if a.get("effort")]
            rec = self._record(
                arm, rnd, labelled, test, clicks=clicks, clicks_total=int(rounds[-1]["clicks_total"]) + clicks,
                annotation_dice=float(np.mean(list(per_class.values()))), annotation_dice_per_class=per_class,
                model_version=loop.current_version, accepted=outcome.accepted, trained_version=outcome.version,
                val_dice_new=outcome.new_score, val_dice_old=outcome.old_score, train_seconds=train_seconds,
                seconds=earlier + time.monotonic() - t0, select_seconds=float(sel.get("select_seconds", 0.0)),
                selected=sel["selected"], steps=self._steps(store, outcome.version),
                made_current_unchecked=outcome.made_current_unchecked, cpu=cpu_usage(cpu0),
                minutes_per_volume=float(np.mean(minutes_each)) if minutes_each else None,
                manual_minutes_per_volume=float(np.mean(manual_each)) if manual_each else None,
                annotation_minutes=float(np.sum(minutes_each)),
                annotation_minutes_total=float(rounds[-1].get("annotation_minutes_total") or 0.0) + float(np.sum(minutes_each)),
                diagnostic=None if diag is None else {"images": diag["images"], "spearman": diag["spearman"]},
            )
            rounds.append(rec)
            _write_json(folder / "rounds.json", rounds)
            self.log(
                f"[{arm}] round {rnd}: {rec['labelled_fraction']:.0%} labelled, test Dice {rec['test_mean_dice']:.3f}, "
                f"annotation Dice {rec['annotation_dice']:.3f} with {clicks} clicks, "
                f"{'switched to' if outcome.accepted else 'kept'} v{loop.current_version} ({rec['seconds']:.0f} s)"
            )
            self.write_outputs()
        return rounds

    def run_full(self) -> list[dict[str, Any]]:
        from segloop.ml.predictor import Predictor
        from segloop.ml.training import train

        rounds = self.arm_rounds(FULL)
        if rounds:
            return rounds
        cfg = self.config
        t0 = time.monotonic()
        cpu0 = CpuSnapshot.now()
        self.log(f"[full] training on all {len(self.plan.pool)} pool images with reference labels")
        store = self._fresh_store(self.arm_dir(FULL) / "data")
        self._fill_store(store, self.plan.pool, self.plan.pool)
        held = set(self.plan.validation)
        pairs = [(r.image_id, r.revision) for r in store.final_labels() if r.image_id not in held]
        minutes, steps = self.plan.budget("full")
        version = train(store, MODEL, build_train_config(cfg, minutes, cfg.seed, steps), revisions=pairs, device=cfg.device)
        test = self.evaluate(Predictor.load(store, MODEL, version.version, device=cfg.device))
        seconds = time.monotonic() - t0
        rec = self._record(FULL, 0, len(self.plan.pool), test, clicks=0, clicks_total=0, annotation_dice=None,
                           annotation_dice_per_class=None, model_version=version.version, accepted=True,
                           train_seconds=seconds, seconds=seconds, selected=[], steps=self._steps(store, version.version),
                           cpu=cpu_usage(cpu0))
        _write_json(self.arm_dir(FULL) / "rounds.json", [rec])
        self.log(f"[full] test Dice {rec['test_mean_dice']:.3f} ({seconds:.0f} s)")
        self.write_outputs()
        return [rec]

    def run(self) -> dict[str, Any]:
        """Run or resume every arm; returns the report (also written to ``OUT/report.json``)."""
        pinned = self.config.pinned()
        cfg_file = self.out / "config.json"
        previous = _read_json(cfg_file, None)
        if previous is not None and previous != pinned:
            diff = sorted(k for k in set(previous) | set(pinned) if previous.get(k) != pinned.get(k))
            raise EmulationError(
                f"{self.out} holds an emulation with other settings ({', '.join(diff)} differ): "
                "resume it with the same options or use another --out"
            )
        if previous is not None:
            self.log(f"resuming the emulation in {self.out}")
        _write_json(cfg_file, pinned)
        self._earlier_sessions = list(_read_json(self.out / "sessions.json", []))
        self._session_cpu = CpuSnapshot.now()
        self._session = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info()}
        _write_json(self.out / "splits.json", {"test": self.plan.test, "pool": self.plan.pool,
                                               "initial": self.plan.initial, "validation": self.plan.validation})
        self.log(f"{len(self.plan.test)} test / {len(self.plan.pool)} pool images; {len(self.plan.initial)} initially labelled, "
                 f"{len(self.plan.validation)} validation, {self.plan.rounds} rounds of {self.config.per_round} "
                 f"-> {self.plan.labelled(self.plan.rounds) / len(self.plan.pool):.0%} labelled")
        self.log(describe_budgets(self.plan.budgets()))
        pre = self.pretrain() if any(a != FULL for a in self.config.arms) else {}
        for arm in self.config.arms:
            self.run_arm(arm, pre)
        return self.write_outputs()

    # --- outputs ------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        arms = {arm: self.arm_rounds(arm) for arm in self.config.arms}
        full = arms.get(FULL)
        full_dice = full[0]["test_mean_dice"] if full else None
        summary: dict[str, Any] = {}
        for arm, rounds in arms.items():
            if not rounds:
                continue
            last = rounds[-1]
            s: dict[str, Any] = {"rounds_done": len(rounds) - 1 if arm != FULL else None,
                                 "final_test_mean_dice": last["test_mean_dice"],
                                 "final_labelled_fraction": last["labelled_fraction"],
                                 "seconds": float(sum(r["seconds"] for r in rounds))}
            if arm != FULL:
                s["auc"] = area_under_curve([r["labelled_fraction"] for r in rounds], [r["test_mean_dice"] for r in rounds])
                s["last_annotation_dice"] = last["annotation_dice"]
                s["clicks_total"] = last["clicks_total"]
                n_img = len(last.get("selected") or [])
                s["last_clicks_per_image_per_class"] = (
                    last["clicks"] / (n_img * len(self.plan.class_names)) if n_img and last.get("clicks") is not None else None
                )
                if full_dice:
                    s["relative_to_full"] = last["test_mean_dice"] / full_dice
                    hit = [r["labelled_fraction"] for r in rounds if r["test_mean_dice"] >= 0.95 * full_dice]
                    s["fraction_reaching_95pct_of_full"] = hit[0] if hit else None
                    s["labels_to_95pct_of_full"] = labels_to_target(
                        [r["labelled"] for r in rounds], [r["test_mean_dice"] for r in rounds], 0.95 * full_dice)
                done = rounds[1:]
                minutes = [r["minutes_per_volume"] for r in done if r.get("minutes_per_volume") is not None]
                manual = [r["manual_minutes_per_volume"] for r in done if r.get("manual_minutes_per_volume") is not None]
                s["minutes_per_volume"] = float(np.mean(minutes)) if minutes else None
                s["manual_minutes_per_volume"] = float(np.mean(manual)) if manual else None
                s["annotation_minutes_total"] = last.get("annotation_minutes_total")
                s["score_error_spearman"] = mean_correlations([r["diagnostic"] for r in done if r.get("diagnostic")])
            summary[arm] = s
        return {"config": self.config.pinned(), "classes": list(self.plan.class_names.values()),
                "splits": {"test": len(self.plan.test), "pool": len(self.plan.pool), "initial": len(self.plan.initial),
                           "validation": len(self.plan.validation), "rounds": self.plan.rounds},
                "budgets": self.plan.budgets(), "effort_model": self.effort.describe(),
                "summary": summary, "arms": arms}

    def _sessions(self) -> list[dict[str, Any]]:
        """Earlier invocations + this one, brought up to date (``OUT/sessions.json``)."""
        if self._session is None or self._session_cpu is None:
            return list(_read_json(self.out / "sessions.json", []))
        usage = cpu_usage(self._session_cpu)
        self._session.update(ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             wall_seconds=round(time.monotonic() - self._session_cpu.wall, 1), cpu=usage)
        sessions = [*self._earlier_sessions, dict(self._session)]
        _write_json(self.out / "sessions.json", sessions)
        return sessions

    def write_outputs(self) -> dict[str, Any]:
        """Rewrite ``rounds.csv``, ``report.json`` and ``curves.png`` from the finished rounds."""
        sessions = self._sessions()
        report = self.report()
        report["sessions"] = sessions
        report["wall_seconds"] = round(float(sum(x.get("wall_seconds") or 0.0 for x in sessions)), 1)
        names = report["classes"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["arm", "round", "labelled", "labelled_fraction", "test_mean_dice", "test_mean_iou",
                    *[f"dice_{n}" for n in names], *[f"iou_{n}" for n in names], "clicks", "clicks_total",
                    "annotation_dice", "model_version", "accepted", "seconds", "train_seconds", "select_seconds", "steps",
                    "own_cores", "other_cores", "minutes_per_volume", "manual_minutes_per_volume"])
        for rounds in report["arms"].values():
            for r in rounds:
                w.writerow([r["arm"], r["round"], r["labelled"], f"{r['labelled_fraction']:.4f}", f"{r['test_mean_dice']:.4f}",
                            f"{r['test_mean_iou']:.4f}", *[f"{r['test_dice'][n]:.4f}" for n in names],
                            *[f"{r['test_iou'][n]:.4f}" for n in names], r["clicks"], r["clicks_total"],
                            "" if r["annotation_dice"] is None else f"{r['annotation_dice']:.4f}", r["model_version"],
                            int(bool(r["accepted"])), f"{r['seconds']:.1f}", _fmt(r.get("train_seconds"), 1),
                            _fmt(r.get("select_seconds"), 1), r.get("steps") or "", _fmt((r.get("cpu") or {}).get("own_cores"), 2),
                            _fmt((r.get("cpu") or {}).get("other_cores"), 2), _fmt(r.get("minutes_per_volume"), 2),
                            _fmt(r.get("manual_minutes_per_volume"), 2)])
        _write_atomic(self.out / "rounds.csv", buf.getvalue().encode())
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["arm", "round", "images", "scorer", "spearman"])
        for rounds in report["arms"].values():
            for r in rounds:
                d = r.get("diagnostic") or {}
                for scorer_name, rho in (d.get("spearman") or {}).items():
                    w.writerow([r["arm"], r["round"], d.get("images"), scorer_name, _fmt(rho, 4)])
        _write_atomic(self.out / "diagnostic.csv", buf.getvalue().encode())
        _write_json(self.out / "report.json", report)
        plot_curves(report, self.out / "curves.png")
        return report


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def area_under_curve(fractions: Sequence[float], dice: Sequence[float]) -> float | None:
    """Trapezoid area under Dice vs. labelled fraction, divided by the fraction span (a mean Dice)."""
    if len(fractions) < 2:
        return float(dice[0]) if dice else None
    x, y = np.asarray(fractions, dtype=float), np.asarray(dice, dtype=float)
    span = float(x[-1] - x[0])
    if span <= 0:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / span)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Test mean Dice vs. labelled fraction, one line per arm; ``full`` as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        for arm, rounds in report["arms"].items():
            if not rounds:
                continue
            if arm == FULL:
                d = rounds[0]["test_mean_dice"]
                ax.axhline(d, color="black", linestyle="--", linewidth=1, label=f"full ({d:.3f})")
                ax.axhline(0.95 * d, color="grey", linestyle=":", linewidth=1, label="95% of full")
                continue
            ax.plot([r["labelled_fraction"] for r in rounds], [r["test_mean_dice"] for r in rounds], marker="o", label=arm)
        cfg = report["config"]
        ax.set_xlabel("labelled fraction of the pool")
        ax.set_ylabel("test mean Dice")
        ax.set_title(f"{Path(cfg['dataset']).name}: {cfg['per_round']}/round, {cfg['clicks']} clicks/class, seed {cfg['seed']}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    _write_atomic(path, buf.getvalue())


def run_emulation(config: EmulationConfig, log: Log | None = None) -> dict[str, Any]:
    """Check, then run or resume an emulation (see the module docstring); returns the report."""
    return Emulation(config, log).run()
