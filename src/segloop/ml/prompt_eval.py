"""Dice per prompt type: what a box, a lasso or a scribble buys beside clicks (issue 15).

Each *protocol* starts an interactive session on the model's automatic prediction and lets the
virtual user (`segloop.ml.virtual_user`, `segloop.ml.virtual_prompts`) prompt every foreground
class, one class after the other, then measures Dice per class against the reference:

====================  ============================================================================
``auto``              no prompt: the automatic prediction
``clicks-1/3/5``      1, 3 or 5 rounds of one corrective click per class (`segloop.ml.click_eval`)
``box``               a 3D box per class around the reference (grown by 1 voxel)
``box+1``             the box, then one round of corrective clicks
``box2d+1``           a 2D box on the class's widest axial slice, then one round of clicks
``lasso``             the outline of the class on its widest axial slice
``lasso+1``           the lasso, then one round of clicks
``scribble``          one stroke per class along its largest error, as model guidance
``scribble-graphcut`` the same strokes as seeds of the graph-cut refinement (`segloop.ml.graphcut`)
====================  ============================================================================

"Axial" is the last array axis. Prompts go through the same session calls as the server's
(`segloop.ml.prompt_session`), so what is measured is what a user gets. The issue's target on
Task04 is ``box+1`` at least as good as ``clicks-3``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from segloop.heap import release_free_heap
from segloop.metrics import dice
from segloop.ml import prompt_session
from segloop.ml.click_eval import click_round
from segloop.ml.virtual_prompts import error_scribbles, reference_box, reference_lasso

PROTOCOLS = ("auto", "clicks-1", "clicks-3", "box", "box+1", "box2d+1", "lasso", "lasso+1", "scribble", "scribble-graphcut")
DEFAULT_PROTOCOLS = PROTOCOLS


def _label(session: Any) -> np.ndarray:
    return np.asarray(session.prediction.label.array)


def _click_rounds(session: Any, ref: np.ndarray, classes: Sequence[int], rounds: int,
                  rng: np.random.Generator, spacing: Sequence[float]) -> None:
    for _ in range(rounds):
        click_round(session, ref, classes, rng, spacing)


def run_protocol(predictor: Any, image: Any, reference: np.ndarray, classes: Sequence[int], protocol: str,
                 rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Dice per class (``(len(classes),)``) after ``protocol`` on one image."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ref = np.asarray(getattr(reference, "array", reference))
    spacing = getattr(image, "spacing", (1.0, 1.0, 1.0))
    name, _, suffix = protocol.partition("+")
    if name not in ("auto", "box", "box2d", "lasso", "scribble", "scribble-graphcut") and not name.startswith("clicks-"):
        raise ValueError(f"unknown prompt protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    follow = int(suffix) if suffix else 0
    session = predictor.session(image)

    def box(v: int, axis: int | None = None) -> None:
        b = reference_box(ref, v, axis=axis)
        if b is not None:
            prompt_session.add_box(session, b)

    def lasso(v: int) -> None:
        las = reference_lasso(ref, v)
        if las is not None:
            prompt_session.add_lasso(session, las)

    def scribble(v: int, mode: str) -> None:
        strokes = error_scribbles(_label(session), ref, v)
        if strokes:
            prompt_session.add_scribbles(session, strokes, mode=mode)  # type: ignore[arg-type]

    per_class: dict[str, Callable[[int], None]] = {
        "box": box, "box2d": lambda v: box(v, axis=2), "lasso": lasso,
        "scribble": lambda v: scribble(v, "guidance"), "scribble-graphcut": lambda v: scribble(v, "graphcut"),
    }
    if name == "auto":
        pass
    elif name.startswith("clicks-"):
        _click_rounds(session, ref, classes, int(name.split("-", 1)[1]), gen, spacing)
    else:
        for v in classes:
            per_class[name](v)
    _click_rounds(session, ref, classes, follow, gen, spacing)
    label = _label(session)
    return np.asarray([dice(label, ref, c) for c in classes], dtype=float)


def evaluate_prompts(predictor: Any, pairs: Iterable[tuple[Any, np.ndarray]],
                     protocols: Sequence[str] = DEFAULT_PROTOCOLS, seed: int = 0) -> dict[str, Any]:
    """Mean Dice per protocol over ``(image, reference)`` pairs, per class and overall, with the
    mean seconds per image of each protocol: ``{"images", "protocols": {name: {class: dice, "mean",
    "seconds"}}}``."""
    classes = [int(v) for v in predictor.spec.foreground]
    names = [predictor.spec.name_of(v) for v in classes]
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no image to evaluate prompts on")
    out: dict[str, Any] = {}
    for protocol in protocols:
        rng = np.random.default_rng(seed)
        rows = []
        t0 = time.perf_counter()
        for image, ref in pairs:
            rows.append(run_protocol(predictor, image, ref, classes, protocol, rng))
            release_free_heap(min_interval=1.0)  # the image's session (segloop.heap)
        mean = np.mean(rows, axis=0)
        out[protocol] = {**{n: float(mean[j]) for j, n in enumerate(names)}, "mean": float(mean.mean()),
                         "seconds": round((time.perf_counter() - t0) / len(pairs), 3)}
    return {"images": len(pairs), "protocols": out}
