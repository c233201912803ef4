"""The interactive model's standard figures: Dice after k clicks, NoC@85 / NoC@90.

Protocol (the field's, as in DeepGrow / DeepEdit / interactive-segmentation benchmarks, for
several classes at once): a session starts from the model's automatic prediction; each *round*
the virtual user (`segloop.ml.virtual_user.next_click`) puts one click per class in that class's
largest error region, all classes' clicks are added together, and the Dice of every class is
recorded. ``k`` counts clicks **per class**. NoC@T of a class is the number of clicks it needed
until its Dice reached T (0 when the automatic prediction already does), capped at ``max_clicks``
(an image that never reaches T counts as the cap — the field's convention).

Plain functions over arrays; a ``predictor`` is a `segloop.ml.predictor.Predictor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from segloop.heap import release_free_heap
from segloop.metrics import dice
from segloop.ml.virtual_user import next_click

THRESHOLDS = (0.85, 0.90)
DEFAULT_MAX_CLICKS = 20


def click_round(session: Any, reference: np.ndarray, classes: Sequence[int], rng: np.random.Generator,
                spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """One round of the protocol: one virtual-user click per class in that class's largest error
    region of the session's current mask, all added together; returns the mask after it."""
    label = np.asarray(session.prediction.label.array)
    clicks = [c for c in (next_click(label, reference, [v], rng, spacing) for v in classes) if c is not None]
    if clicks:
        label = np.asarray(session.add_clicks(clicks).label.array)
    return label


def click_curve(
    predictor: Any,
    image: Any,
    reference: np.ndarray,
    classes: Sequence[int],
    max_clicks: int = DEFAULT_MAX_CLICKS,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """Dice per class after 0..``max_clicks`` clicks per class.

    Returns:
        ``(max_clicks + 1, len(classes))`` float array; row 0 is the automatic prediction. A
        class without errors gets no click and keeps its Dice.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    ref = np.asarray(getattr(reference, "array", reference))
    session = predictor.session(image)
    label = np.asarray(session.prediction.label.array)
    rows = [[dice(label, ref, c) for c in classes]]
    spacing = getattr(image, "spacing", (1.0, 1.0, 1.0))
    for _ in range(max_clicks):
        label = click_round(session, ref, classes, rng, spacing)
        rows.append([dice(label, ref, c) for c in classes])
    return np.asarray(rows, dtype=float)


def number_of_clicks(curve: np.ndarray, threshold: float, cap: int | None = None) -> np.ndarray:
    """NoC per class: the first k with Dice >= ``threshold`` in a ``(K + 1, C)`` curve; the cap
    (default K) where it is never reached."""
    c = np.asarray(curve, dtype=float)
    k_max = c.shape[0] - 1 if cap is None else int(cap)
    out = np.full(c.shape[1], k_max, dtype=int)
    for j in range(c.shape[1]):
        hit = np.nonzero(c[: k_max + 1, j] >= threshold)[0]
        if hit.size:
            out[j] = int(hit[0])
    return out


def summarize_curves(curves: Iterable[np.ndarray], class_names: Sequence[str],
                     thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Means over images: ``dice_after[k][class|"mean"]``, ``noc[T][class|"mean"]`` and the share of
    images reaching each threshold within the cap, per class."""
    stack = np.stack(list(curves))  # (N, K + 1, C)
    if stack.ndim != 3 or stack.shape[2] != len(class_names):
        raise ValueError(f"curves of shape {stack.shape[1:]} do not fit {len(class_names)} class names")
    n, k1, _ = stack.shape
    mean = stack.mean(axis=0)
    dice_after = {
        str(k): {**{name: float(mean[k, j]) for j, name in enumerate(class_names)}, "mean": float(mean[k].mean())}
        for k in range(k1)
    }
    noc: dict[str, Any] = {}
    reached: dict[str, Any] = {}
    for t in thresholds:
        per = np.stack([number_of_clicks(c, t) for c in stack])  # (N, C)
        key = f"{round(t * 100)}"
        noc[key] = {**{name: float(per[:, j].mean()) for j, name in enumerate(class_names)}, "mean": float(per.mean())}
        ok = np.stack([(c >= t).any(axis=0) for c in stack])
        reached[key] = {name: float(ok[:, j].mean()) for j, name in enumerate(class_names)}
    return {"images": int(n), "max_clicks": int(k1 - 1), "dice_after": dice_after, "noc": noc, "reached": reached}


def evaluate_clicks(
    predictor: Any,
    pairs: Iterable[tuple[Any, np.ndarray]],
    max_clicks: int = DEFAULT_MAX_CLICKS,
    seed: int = 0,
) -> dict[str, Any]:
    """`summarize_curves` over ``(image, reference)`` pairs with the model's foreground classes."""
    classes = [int(v) for v in predictor.spec.foreground]
    names = [predictor.spec.name_of(v) for v in classes]
    rng = np.random.default_rng(seed)
    curves = []
    for image, ref in pairs:
        curves.append(click_curve(predictor, image, ref, classes, max_clicks, rng))
        release_free_heap(min_interval=1.0)  # the image's session (segloop.heap)
    if not curves:
        raise ValueError("no image to evaluate clicks on")
    return summarize_curves(curves, names)
