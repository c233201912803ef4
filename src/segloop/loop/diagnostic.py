"""Which selection scores predict the model's error: the emulation's correlation diagnostic.

At a round, every scorer scores the same pool images with the same model, and the model's
actual error on each (``1 -`` mean Dice of its automatic segmentation against the reference,
over the foreground classes; from the scorers' one pass, post-processed as `Predictor.predict`
does but without its test-time mirroring) is measured. The Spearman rank correlation between a scorer's
scores and the errors says whether ranking by that score puts the images the model gets most
wrong first: a score that does not predict error cannot select well.

Scorers are strategy names (default parameters) or the named variants in `SCORERS`.

`ErrorOracle` (the emulation arm ``oracle-error``) ranks the pool by that error itself: the score a
perfect error predictor would give. It reads the reference labels, so only the emulation can run
it, and it is the ceiling of selection by uncertainty: where it does not beat random, no score
that predicts the model's error can.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from segloop.activelearning.strategies import STRATEGIES, ScoringContext, Strategy, get_strategy
from segloop.activelearning.typicality import MIN_CLUSTER
from segloop.imaging.volume import Volume
from segloop.loop.statistics import spearman
from segloop.ml.postprocess import keep_largest

# name -> (strategy, parameters). Passes kept small: the diagnostic runs every round.
SCORERS: dict[str, tuple[str, dict[str, Any]]] = {
    "entropy": ("entropy", {}),
    "entropy-foreground": ("entropy", {"region": "foreground"}),
    "entropy-volume": ("entropy", {"region": "volume"}),
    "soft-dice": ("soft-dice", {}),
    "mc-dropout": ("mc-dropout", {"passes": 4}),
    "mc-dropout-class": ("mc-dropout", {"passes": 4, "region": "class"}),
    "mc-dropout-dice": ("mc-dropout", {"passes": 4, "metric": "dice"}),
    "tta": ("tta", {"passes": 4}),
    "tta-dice": ("tta", {"passes": 4, "metric": "dice"}),
}
# the emulation arm that ranks by the model's actual error (`ErrorOracle`)
ORACLE = "oracle-error"
DEFAULT_DIAGNOSTIC = ("entropy", "entropy-volume", "soft-dice", "mc-dropout-class", "tta-dice")
# Emulation arms that are a strategy with other parameters but no per-image score (batch mode):
# name -> (strategy, parameters).
ARM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # typical images while a cluster larger than the authors' MIN_CLUSTER_SIZE is uncovered, then entropy
    "typiclust-entropy": ("typiclust", {"min_cluster": MIN_CLUSTER, "then": "entropy"}),
}


def scorer(name: str) -> Strategy:
    """The strategy behind a scorer name.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name in SCORERS:
        strategy, params = SCORERS[name]
        return get_strategy(strategy, **params)
    try:
        found = get_strategy(name)
    except ValueError:
        raise ValueError(f"unknown diagnostic scorer {name!r} (known: {', '.join(SCORERS)}, or a strategy name)") from None
    if found.batch_mode:
        raise ValueError(f"strategy {name!r} orders the pool as a whole and gives no per-image score to correlate with error")
    return found


class ErrorOracle(Strategy):
    """Emulation only: an image's score is the current model's actual error on it (`automatic_error`
    against the reference label), so the pool is ranked worst-first. Not in `STRATEGIES`: a user has
    no reference to rank by.

    Args:
        reference: image id -> reference label map ``(X, Y, Z)``; None makes `score` refuse (the
            emulation's checks build the arm without one).
    """

    name = ORACLE
    needs_model = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, reference: Callable[[str], np.ndarray] | None = None) -> None:
        super().__init__()
        self.reference = reference

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        if self.reference is None:
            raise ValueError(f"{self.name!r} ranks by the reference labels: only the emulation can run it")
        if ctx.predictor is None:
            raise ValueError(f"strategy {self.name!r} needs a trained model")
        return automatic_error(ctx, image_id, self.reference)


def arm_strategy(name: str, seed: int | None = None,
                 reference: Callable[[str], np.ndarray] | None = None) -> Strategy:
    """The strategy of an emulation arm: a strategy name with that strategy's own defaults, a
    named variant of `SCORERS` that is not a strategy name (``tta-dice``, ``mc-dropout-class``,
    ...) or of `ARM_VARIANTS` (``typiclust-entropy``), or `ORACLE` (`ErrorOracle` on ``reference``);
    ``seed`` sets the strategy's seed where it has one.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name == ORACLE:
        return ErrorOracle(reference)
    params: dict[str, Any] = {}
    if name in STRATEGIES:
        strategy = name
    elif name in SCORERS or name in ARM_VARIANTS:
        strategy, params = SCORERS.get(name) or ARM_VARIANTS[name]
    else:
        variants = ", ".join([*(n for n in SCORERS if n not in STRATEGIES), *ARM_VARIANTS, ORACLE])
        raise ValueError(f"unknown active-learning strategy {name!r} (known: {', '.join(STRATEGIES)}; variants: {variants})")
    s = get_strategy(strategy, **params)
    if seed is not None and "seed" in s.params:
        s = get_strategy(strategy, **{**params, "seed": int(seed)})
    return s


def check_scorers(names: Sequence[str]) -> list[Strategy]:
    """Strategies for ``names`` (raises ValueError for an unknown one)."""
    return [scorer(n) for n in names]


def model_error(prediction: np.ndarray, reference: np.ndarray, class_values: Sequence[int]) -> float:
    """``1 -`` mean Dice over ``class_values`` of two label maps (a class absent from both counts as Dice 1)."""
    from segloop.metrics import dice

    p, r = np.asarray(prediction), np.asarray(reference)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} does not match reference shape {r.shape}")
    if not class_values:
        raise ValueError("no foreground class to measure")
    return float(1.0 - np.mean([float(dice(p, r, int(v))) for v in class_values]))


def automatic_error(ctx: ScoringContext, image_id: str, reference: Callable[[str], np.ndarray]) -> float:
    """`model_error` of the model's automatic segmentation of ``image_id`` against its reference.

    The segmentation comes from the pass the deterministic scorers share (``ctx.automatic``),
    post-processed as `Predictor.predict` does but not mirrored (one pass per image, not two).
    """
    predictor = ctx.predictor
    raw = predictor.labels_from(predictor.to_image_grid(ctx.automatic(image_id), ctx.prepared(image_id)))
    label, _ = keep_largest(raw, predictor.spec.keep_largest)
    return model_error(label, reference(image_id), [int(v) for v in predictor.spec.foreground])


def score_error_correlation(
    predictor: Any,
    image_ids: Sequence[str],
    load: Callable[[str], Volume],
    reference: Callable[[str], np.ndarray],
    names: Sequence[str],
) -> dict[str, Any]:
    """Scores of every scorer and the model's error on ``image_ids``, and their rank correlations.

    Returns:
        ``{"images", "spearman": {name: rho or None}, "scores": {name: {id: score}},
        "errors": {id: error}, "seconds": {name: s, "error": s}}``.
    """
    strategies = {n: scorer(n) for n in names}
    ctx = ScoringContext(load=load, predictor=predictor)
    scores: dict[str, dict[str, float]] = {n: {} for n in names}
    errors: dict[str, float] = {}
    seconds: dict[str, float] = {n: 0.0 for n in [*names, "error"]}
    for image_id in image_ids:
        t0 = time.perf_counter()
        errors[image_id] = automatic_error(ctx, image_id, reference)
        seconds["error"] += time.perf_counter() - t0
        for n, strat in strategies.items():
            t0 = time.perf_counter()
            scores[n][image_id] = float(strat.score(image_id, ctx))
            seconds[n] += time.perf_counter() - t0
        ctx.forget(image_id)
    ids = list(errors)
    err = [errors[i] for i in ids]
    rho = {n: spearman([scores[n][i] for i in ids], err) for n in names}
    return {"images": len(ids), "spearman": rho, "scores": scores, "errors": errors,
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def mean_correlations(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scorer, the mean and range of its Spearman correlation over several diagnostics."""
    out: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(n for r in records for n in (r.get("spearman") or {})))
    for n in names:
        vals = [float(v) for r in records if (v := (r.get("spearman") or {}).get(n)) is not None]
        out[n] = {"n": len(vals), "mean": float(np.mean(vals)) if vals else None,
                  "min": float(np.min(vals)) if vals else None, "max": float(np.max(vals)) if vals else None}
    return out
