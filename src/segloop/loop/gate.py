"""The version gate: does a newly trained version replace the current one?

A gate decided by noise is worse than none. On four validation images the old rule ("new mean
Dice >= old mean Dice") refused 15 of 24 fine-tuned versions, most by less than 0.01 — well
inside the spread of a four-image mean — so the loop often learned nothing from what the user
saved. The rules here compare the two versions *paired*, image by image, and take the
uncertainty of that comparison into account:

- ``"safety"`` (the default): continuous fine-tuning with the gate as a safety net only. The
  new version is refused only when it is *clearly* worse: the upper end of the 95 % interval of
  the mean paired difference (new − old) is below zero **and** the mean difference is worse than
  ``tolerance``. With fewer than ``MIN_PAIRED`` validation images there is no interval; the new
  version is then refused only when it collapsed (worse by more than ``collapse``).
- ``"paired"``: the new version must be better within its uncertainty: the lower end of the
  interval is above ``-tolerance`` and the mean difference at least ``min_improvement``.
- ``"strict"``: the old rule, mean new >= mean old + ``min_improvement`` (kept to reproduce the
  runs of 2026-11-30).

Plain functions over per-image scores; `GateDecision` records what was compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GATES = ("safety", "paired", "strict")
MIN_PAIRED = 3  # fewer paired images give no usable interval


@dataclass(frozen=True)
class GateDecision:
    """What the gate compared and why it decided as it did."""

    accepted: bool
    rule: str
    images: int
    old_mean: float | None
    new_mean: float | None
    mean_difference: float | None
    ci95: tuple[float, float] | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d


def paired_interval(differences: Sequence[float]) -> tuple[float, float] | None:
    """95 % interval (Student's t) of the mean of paired differences; ``None`` for fewer than
    `MIN_PAIRED` values."""
    d = np.asarray(differences, dtype=float)
    if d.size < MIN_PAIRED:
        return None
    from scipy import stats

    m = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    q = float(stats.t.ppf(0.975, d.size - 1))
    return (m - q * se, m + q * se)


def decide(
    new_scores: Sequence[float],
    old_scores: Sequence[float],
    rule: str = "safety",
    *,
    min_improvement: float = 0.0,
    tolerance: float = 0.01,
    collapse: float = 0.05,
) -> GateDecision:
    """Decide whether the new version replaces the old one from per-image scores (same images,
    same order; higher is better, e.g. mean Dice over classes).

    Raises:
        ValueError: unknown rule, scores of different lengths.
    """
    if rule not in GATES:
        raise ValueError(f"unknown version gate {rule!r}: choose one of {', '.join(GATES)}")
    new = np.asarray(new_scores, dtype=float)
    old = np.asarray(old_scores, dtype=float)
    if new.shape != old.shape:
        raise ValueError(f"the gate needs paired scores: {new.size} new vs {old.size} old")
    if new.size == 0:
        return GateDecision(True, rule, 0, None, None, None, None, "no validation image: accepted")
    diff = new - old
    m = float(diff.mean())
    ci = paired_interval(diff.tolist())
    base = dict(rule=rule, images=int(new.size), old_mean=float(old.mean()), new_mean=float(new.mean()),
                mean_difference=m, ci95=ci)
    if rule == "strict":
        ok = float(new.mean()) >= float(old.mean()) + min_improvement
        return GateDecision(ok, reason=f"mean {new.mean():.4f} vs {old.mean():.4f} + {min_improvement}", **base)  # type: ignore[arg-type]
    if rule == "safety":
        if ci is None:
            ok = m >= -collapse
            why = (f"{new.size} image(s), no interval: refused only on a collapse (difference {m:+.4f}, "
                   f"limit -{collapse})")
        else:
            ok = not (ci[1] < 0 and m < -tolerance)
            why = (f"difference {m:+.4f}, 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}]: "
                   + ("not clearly worse" if ok else f"clearly worse (beyond -{tolerance})"))
        return GateDecision(ok, reason=why, **base)  # type: ignore[arg-type]
    # paired: must be better, within its uncertainty
    if ci is None:
        ok = m >= min_improvement
        why = f"{new.size} image(s), no interval: difference {m:+.4f} vs margin {min_improvement}"
    else:
        ok = m >= min_improvement and ci[0] > -tolerance
        why = f"difference {m:+.4f}, 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}], margin {min_improvement}"
    return GateDecision(ok, reason=why, **base)  # type: ignore[arg-type]


def per_image_mean_dice(predictor: Any, pairs: Iterable[tuple[Any, np.ndarray]]) -> list[float]:
    """Automatic segmentation of each image: its Dice averaged over the model's foreground classes."""
    from segloop.metrics import dice

    values = [int(v) for v in predictor.spec.foreground]
    out = []
    for image, ref in pairs:
        label = np.asarray(predictor.predict(image).label.array)
        r = np.asarray(getattr(ref, "array", ref))
        out.append(float(np.mean([dice(label, r, v) for v in values])) if values else 1.0)
    return out
