"""What an emulation will cost on this machine, said before it starts (`segloop.loop.emulate`).

A large dataset (say 20 whole-brain MR volumes of 256x256x160) can make the defaults run for
hours on a CPU. Rather than an hour of nothing, the run measures two unit costs first and
multiplies them by the work the settings imply:

- seconds per optimiser step of the planned network and patch (`segloop.ml.plan.calibrate`,
  click simulation included), and
- seconds per whole-volume inference: one sliding-window pass of the planned network over a
  volume of the dataset's median shape on the training grid (untrained weights cost the same).
  A click costs one window (the session refines a window around it) and the virtual user's
  search for it and the Dice recorded after it, on the whole volume (`_virtual_user_click`:
  0.5 s of a 256x256x160 click before the search kept to the classes' box, 0.05 s since).

An automatic result (the test split's evaluation, the start of a session) costs
`automatic_passes` whole-volume passes: the plain one and one per mirrored axis.

Counted work (per active-learning arm and round): the training steps; the test split's
evaluation; scoring the unlabelled pool with the strategy (its ``passes``: MC-dropout and TTA
run several); the diagnostic (one automatic pass per image, shared by the deterministic scorers,
plus each stochastic scorer's passes); the virtual user's annotation (one automatic pass and up
to ``clicks`` clicks per class per image); and, once per arm, the click and prompt figures. Pre-training and
``full`` add their steps and one evaluation each. Reading, resampling and writing files are not
counted (small beside the network on a CPU), so the estimate is a lower bound of sorts; the
2026-12-03 Task04 runs in docs/emulation/ compare it with the measured wall time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from segloop.activelearning.strategies import get_strategy
from segloop.loop.diagnostic import SCORERS, arm_strategy
from segloop.loop.emulation_setup import FULL, Plan

DEFAULT_WARN_MINUTES = 90.0  # the budget for a 20-image 256x256x160 dataset on 2 cores
DEFAULT_MEASURE_IMAGES = 20  # the diagnostic's and the click figures' images when they are cheap
MIN_DIAGNOSTIC_IMAGES = 5  # fewer give a rank correlation too noisy to read: then none
DIAGNOSTIC_SHARE = 0.25  # fitted diagnostic: at most this share of the core work's estimated time
CLICK_FIGURES_SHARE = 0.10  # fitted click figures: at most this share
PROMPT_FIGURES_SHARE = 0.05  # fitted prompt figures (on the click figures' first images): at most this share


@dataclass(frozen=True)
class Measurements:
    """What the run measures beside the loop itself: the diagnostic's scorers and images per round,
    the click figures' test images and how many of them also get the prompt figures."""

    diagnose: tuple[str, ...]
    diagnose_images: int
    noc_images: int
    notes: tuple[str, ...] = ()
    prompt_images: int | None = None  # the prompt figures' test images (None: as many as noc_images)

    @property
    def prompts(self) -> int:
        """Test images of the prompt figures (the first of the click figures' images)."""
        return self.noc_images if self.prompt_images is None else min(self.prompt_images, self.noc_images)


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of one optimiser step, one whole-volume inference and one click, on this machine."""

    step_seconds: float
    inference_seconds: float
    click_seconds: float
    patch_size: tuple[int, int, int]
    volume_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def passes_of(name: str) -> int:
    """Network passes a strategy or diagnostic scorer needs per image beyond the automatic one (0 for
    the deterministic ones, which reuse it; ``random``/``sequential`` need none at all)."""
    strategy, params = SCORERS.get(name, (name, {}))
    s = get_strategy(strategy, **params)
    return int(s.params["passes"]) if "passes" in s.params else 0


def click_figures_seconds(noc_clicks: int, classes: int, inference: float, click: float) -> float:
    """One test image's click figures: a session and ``noc_clicks`` rounds of a click per class."""
    return inference + noc_clicks * classes * click


def prompt_figures_seconds(classes: int, inference: float, click: float) -> float:
    """One test image's prompt figures: each `segloop.ml.prompt_eval` protocol a session, prompts and
    up to 3 click rounds per class (an upper bound)."""
    from segloop.ml.prompt_eval import PROTOCOLS

    return len(PROTOCOLS) * (inference + 3 * classes * click)


def strategy_passes(name: str) -> int:
    """Passes per pool image when ``name`` ranks the pool (random/sequential: 0)."""
    if name in ("random", "sequential"):
        return 0
    s = arm_strategy(name)  # a strategy with its own defaults, or a named variant (tta-dice)
    return max(1, int(s.params.get("passes", 1)))


def describes_labelled(name: str) -> bool:
    """True when ``name`` orders the pool as a whole (typiclust): each round it describes the
    labelled images as well as the unlabelled ones, with the round's new model."""
    return arm_strategy(name).batch_mode


def measure_unit_costs(root: Any, names: list[str], num_classes: int, device: str | None,
                       threads: int | None = None) -> UnitCosts:
    """Plan the network as training will (`segloop.ml.plan` on the named cases' fingerprint), then
    time a few steps and one whole-volume inference of the median shape."""
    import torch

    from segloop.ml.fingerprint import fingerprint_msd
    from segloop.ml.inference import predict_probabilities
    from segloop.ml.networks import build_network
    from segloop.ml.plan import calibrate, make_plan

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fp = fingerprint_msd(root, names=names, max_cases=20)
    image_channels = fp.channels
    mlplan = calibrate(make_plan(fp, device=dev), image_channels, num_classes, steps=3, threads=threads)
    shape = mlplan.resampled_median_shape or fp.median_shape
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        net = build_network(mlplan.network, image_channels + num_classes, num_classes).to(dev).eval()
        image = np.random.default_rng(0).standard_normal((image_channels, *shape)).astype(np.float32)
        window = np.zeros((image_channels, *mlplan.patch_size), dtype=np.float32)
        predict_probabilities(net, window, None, mlplan.patch_size, num_classes, device=dev)  # warm-up
        click = _best_of(3, lambda: predict_probabilities(net, window, None, mlplan.patch_size, num_classes, device=dev))
        repeats = 3 if click * np.prod(shape) / np.prod(mlplan.patch_size) < 10 else 1  # a big volume: once
        infer = _best_of(repeats, lambda: predict_probabilities(net, image, None, mlplan.patch_size, num_classes, device=dev))
    finally:
        torch.set_num_threads(old)
    pred, ref = _user_maps(shape, fp.class_voxels, num_classes)
    click += _best_of(2, lambda: _virtual_user_click(pred, ref))
    return UnitCosts(float(mlplan.seconds_per_step or 0.0), infer, click, tuple(mlplan.patch_size),  # type: ignore[arg-type]
                     tuple(int(s) for s in shape), tuple(float(s) for s in mlplan.spacing))  # type: ignore[arg-type]


def _user_maps(shape: tuple[int, ...], class_voxels: dict[int, float], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a slightly wrong prediction of ``shape``: one ball per foreground class of
    the dataset's median size (``class_voxels``), the prediction's shifted by 2 voxels."""
    grid = np.ogrid[tuple(slice(0, int(n)) for n in shape)]
    ref = np.zeros(tuple(int(n) for n in shape), np.uint8)
    pred = np.zeros_like(ref)
    for c in range(1, max(2, num_classes)):
        radius = max(2.0, (3.0 * float(class_voxels.get(c, 1000.0)) / (4.0 * np.pi)) ** (1 / 3))
        centre = [n * (c / (num_classes + 1)) if a == 0 else n / 2 for a, n in enumerate(shape)]
        for out, shift in ((ref, 0.0), (pred, 2.0)):
            d2 = sum((g - centre[a] - shift) ** 2 for a, g in enumerate(grid))
            out[d2 < radius**2] = c
    return pred, ref


def _virtual_user_click(pred: np.ndarray, ref: np.ndarray) -> float:
    """One click of the virtual user on whole volumes: find it (`next_click`) and record Dice, as
    the annotation and the click figures do after every click — beside the network, the larger
    part of a click on a large volume."""
    from segloop.ml.virtual_user import next_click

    next_click(pred, ref, [1], 0)
    a, b = pred == 1, ref == 1
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def _best_of(n: int, fn: Any) -> float:
    """The shortest of ``n`` timed calls (the least disturbed by whatever else runs)."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def configured(plan: Plan) -> Measurements:
    """The measurements as configured (a fitted setting, None, counts as `DEFAULT_MEASURE_IMAGES`)."""
    cfg = plan.config
    diag = DEFAULT_MEASURE_IMAGES if cfg.diagnose_images is None else int(cfg.diagnose_images)
    noc = DEFAULT_MEASURE_IMAGES if cfg.noc_images is None else int(cfg.noc_images)
    return Measurements(tuple(cfg.diagnose), diag, min(noc, len(plan.test)))


def fit_measurements(plan: Plan, costs: UnitCosts) -> Measurements:
    """Fit the settings left open (None) to the cost, from the data: the diagnostic may take
    `DIAGNOSTIC_SHARE` and the click figures `CLICK_FIGURES_SHARE` of the core work's estimated time
    (training, evaluation, selection, annotation). A diagnostic that does not fit first drops its
    stochastic scorers (MC-dropout, TTA: several passes per image), then images; below
    `MIN_DIAGNOSTIC_IMAGES` it is off. Settings given explicitly are kept as they are."""
    cfg = plan.config
    base = configured(plan)
    core_kinds = ("training", "evaluation", "selection", "annotation")
    off = estimate(plan, costs, Measurements(base.diagnose, 0, 0))
    core = sum(off["by_kind"].get(k, 0.0) for k in core_kinds)
    model_arms = [a for a in cfg.arms if a != FULL]
    notes: list[str] = []
    scorers, diag_images = base.diagnose, base.diagnose_images
    if cfg.diagnose_images is None and scorers and model_arms:
        per_image = plan.rounds * len(model_arms) * costs.inference_seconds
        budget = DIAGNOSTIC_SHARE * core
        fit = int(budget // max(per_image * (1 + sum(passes_of(n) for n in scorers)), 1e-9))
        if fit < DEFAULT_MEASURE_IMAGES:
            cheap = tuple(n for n in scorers if passes_of(n) == 0)
            fit_cheap = int(budget // max(per_image, 1e-9))
            if cheap and cheap != scorers and fit_cheap > fit:
                notes.append(f"diagnostic: the multi-pass scorers ({', '.join(n for n in scorers if n not in cheap)}) "
                             f"do not fit {DIAGNOSTIC_SHARE:.0%} of the run's time on these images; kept "
                             f"{', '.join(cheap)}")
                scorers, fit = cheap, fit_cheap
        diag_images = min(DEFAULT_MEASURE_IMAGES, fit)
        if diag_images < MIN_DIAGNOSTIC_IMAGES:
            notes.append(f"diagnostic off: fewer than {MIN_DIAGNOSTIC_IMAGES} pool images fit {DIAGNOSTIC_SHARE:.0%} "
                         "of the run's time (--diagnose-images N to force it)")
            diag_images = 0
        elif diag_images < DEFAULT_MEASURE_IMAGES:
            notes.append(f"diagnostic on {diag_images} pool images per round (fits {DIAGNOSTIC_SHARE:.0%} of the run's time)")
    noc_images = base.noc_images
    auto = automatic_passes(cfg) * costs.inference_seconds  # a session's start, as in `estimate`
    if cfg.noc_images is None:
        per_image = len(cfg.arms) * click_figures_seconds(cfg.noc_clicks, len(plan.class_names), auto, costs.click_seconds)
        noc_images = min(base.noc_images, int(CLICK_FIGURES_SHARE * core // max(per_image, 1e-9)))
        if noc_images < base.noc_images:
            notes.append(f"click figures on {noc_images} test images (fit {CLICK_FIGURES_SHARE:.0%} of the run's time; "
                         "--noc-images N to force)")
    prompt_images: int | None = None  # --noc-images given: the prompt figures on all of them too
    if cfg.noc_images is None:
        per_prompt = len(cfg.arms) * prompt_figures_seconds(len(plan.class_names), auto, costs.click_seconds)
        prompt_images = min(noc_images, int(PROMPT_FIGURES_SHARE * core // max(per_prompt, 1e-9)))
        if prompt_images < noc_images:
            notes.append(f"prompt figures on {prompt_images} of the click figures' {noc_images} test images (fit "
                         f"{PROMPT_FIGURES_SHARE:.0%} of the run's time)")
    return Measurements(scorers, diag_images, noc_images, tuple(notes), prompt_images)


def automatic_passes(cfg: Any) -> int:
    """Network passes of one automatic result: the plain pass and one per axis the training flips
    (`segloop.ml.predictor.Predictor.mirror_axes`, test-time mirroring)."""
    from segloop.ml.train_config import TrainConfig, mirror_axes

    return 1 + len(mirror_axes((cfg.train or {}).get("flip_axes", TrainConfig().flip_axes)))


def estimate(plan: Plan, costs: UnitCosts, measure: Measurements | None = None) -> dict[str, Any]:
    """Seconds per phase and in total for the arms of ``plan`` with ``measure`` (default: as
    configured); see the module docstring."""
    cfg = plan.config
    measure = measure or configured(plan)
    n_classes = len(plan.class_names)
    n_test = len(plan.test)
    infer, click = costs.inference_seconds, costs.click_seconds
    auto = automatic_passes(cfg) * infer  # an automatic result (evaluation, a session's start) is mirrored
    phases: dict[str, dict[str, float]] = {}

    def add(phase: str, kind: str, seconds: float) -> None:
        phases.setdefault(phase, {}).setdefault(kind, 0.0)
        phases[phase][kind] += seconds

    arms = cfg.arms
    noc = (min(measure.noc_images, n_test) * click_figures_seconds(cfg.noc_clicks, n_classes, auto, click)
           + min(measure.prompts, n_test) * prompt_figures_seconds(n_classes, auto, click))
    if any(a != FULL for a in arms):
        _, steps = plan.budget("pretrain")
        add("pretrain", "training", float(steps or 0) * costs.step_seconds)
        add("pretrain", "evaluation", n_test * auto)
    diag_passes = sum(passes_of(n) for n in measure.diagnose)
    for arm in arms:
        if arm == FULL:
            _, steps = plan.budget("full")
            add(FULL, "training", float(steps or 0) * costs.step_seconds)
            add(FULL, "evaluation", n_test * auto)
            add(FULL, "click figures", noc)
            continue
        sel = strategy_passes(arm)
        whole_pool = describes_labelled(arm)
        for rnd in range(1, plan.rounds + 1):
            unlabelled = len(plan.pool) - plan.labelled(rnd - 1)
            _, steps = plan.budget("round", rnd)
            add(arm, "training", float(steps or 0) * costs.step_seconds)
            add(arm, "evaluation", n_test * auto)
            add(arm, "selection", (len(plan.pool) if whole_pool else unlabelled) * sel * infer)
            if measure.diagnose and measure.diagnose_images:
                add(arm, "diagnostic", min(measure.diagnose_images, unlabelled) * (1 + diag_passes) * infer)
            add(arm, "annotation", plan.per_round * (auto + cfg.clicks * n_classes * click))
        add(arm, "click figures", noc)
    total = float(sum(sum(p.values()) for p in phases.values()))
    kinds: dict[str, float] = {}
    for p in phases.values():
        for k, v in p.items():
            kinds[k] = kinds.get(k, 0.0) + v
    return {"unit_costs": asdict(costs), "measurements": asdict(measure), "phases": phases, "by_kind": kinds,
            "total_seconds": total}


def describe(est: dict[str, Any]) -> str:
    """Two lines for the log: the unit costs, then the total and its largest parts."""
    u = est["unit_costs"]
    kinds = sorted(est["by_kind"].items(), key=lambda kv: -kv[1])
    parts = ", ".join(f"{k} {v / 60:.0f}" for k, v in kinds if v >= 30)
    return (f"cost on this machine: {u['step_seconds']:.2f} s per step (patch {'x'.join(map(str, u['patch_size']))}), "
            f"{u['inference_seconds']:.1f} s per whole-volume inference ({'x'.join(map(str, u['volume_shape']))}), "
            f"{u['click_seconds']:.2f} s per click\n"
            f"estimated {est['total_seconds'] / 60:.0f} min in all (minutes: {parts or 'each part under half a minute'})")


def advice(est: dict[str, Any], limit_minutes: float) -> str:
    """What would shorten a run whose estimate exceeds ``limit_minutes``, largest part first."""
    tips = {
        "training": "--steps-per-image / --min-steps (fewer steps per training) or --pretrain-steps/--steps-per-round",
        "selection": "a cheaper strategy (entropy rather than mc-dropout/tta) or a smaller --pool-size",
        "diagnostic": "--diagnose-images N (fewer) or --diagnose none",
        "evaluation": "--test-fraction (a smaller test split)",
        "annotation": "--per-round or --clicks",
        "click figures": "--noc-images N (fewer) or 0",
    }
    kinds = sorted(est["by_kind"].items(), key=lambda kv: -kv[1])
    lines = [f"the estimate ({est['total_seconds'] / 60:.0f} min) exceeds {limit_minutes:g} min; what would shorten it:"]
    lines += [f"  {k} ({v / 60:.0f} min): {tips[k]}" for k, v in kinds if k in tips and v > 0.05 * est["total_seconds"]]
    return "\n".join(lines)
