"""`rank_pool`: score the unlabelled pool with a strategy and order it (cached, batched, cancellable).

Batches of ``batch_size`` images are scored one after the other; after each batch the new
scores go into the `ScoreCache` in one short transaction and ``progress``/``cancel`` are
honoured. The store is only read (short read transactions through the `Datastore` protocol),
so annotators can keep saving labels while a pool is scored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segloop.activelearning.cache import ScoreCache
from segloop.activelearning.diversity import diverse_order, image_descriptor
from segloop.activelearning.strategies import ScoringContext, Strategy, get_strategy
from segloop.store.base import Datastore


class RankingCancelled(Exception):
    """`rank_pool` stopped because its ``cancel`` event was set (scores so far stay cached)."""


@dataclass(frozen=True)
class RankedImage:
    """One pool image: ``rank`` 1 is the image to annotate first."""

    image_id: str
    name: str
    score: float
    rank: int
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "name": self.name, "score": self.score, "rank": self.rank, "cached": self.cached}


@dataclass
class Ranking:
    """The ordered pool with scores (``items`` best first) and how it was computed."""

    strategy: str
    params: dict[str, Any]
    model: str | None
    version: int | None
    items: list[RankedImage]
    diversity: float = 0.0
    seconds: float = 0.0
    scored: int = 0  # images scored now (the others came from the cache)
    extra: dict[str, Any] = field(default_factory=dict)

    def ids(self, n: int | None = None) -> list[str]:
        """Image ids in rank order (the first ``n``)."""
        items = self.items if n is None else self.items[:n]
        return [i.image_id for i in items]

    def scores(self) -> dict[str, float]:
        return {i.image_id: i.score for i in self.items}

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "params": self.params, "model": self.model, "version": self.version,
            "diversity": self.diversity, "seconds": round(self.seconds, 3), "scored": self.scored,
            "items": [i.to_dict() for i in self.items],
        }


def data_folder(store: Datastore) -> Any:
    """The store's data folder (where the score cache lives): ``store.root`` or the staging dir's parent."""
    root = getattr(store, "root", None)
    return root if root is not None else store.staging_dir().parent


def rank_pool(
    store: Datastore,
    strategy: Strategy | str,
    *,
    predictor: Any = None,
    pool: Sequence[str] | None = None,
    limit: int | None = None,
    diversity: float = 0.0,
    duplicate_threshold: float = 0.98,
    cache: ScoreCache | bool = True,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Ranking:
    """Rank ``pool`` (default: every image without a final label) with ``strategy``.

    Args:
        store: the datastore (read only).
        strategy: a `Strategy` or a strategy name (default parameters).
        predictor: the shared model (`segloop.ml.predictor.Predictor`); required by model-based strategies.
        pool: image ids to rank instead of the default pool.
        limit: keep only the first ``limit`` items.
        diversity: weight of the near-duplicate penalty (0: plain score order); see
            `segloop.activelearning.diversity.diverse_order`.
        duplicate_threshold: cosine similarity above which two images count as near-duplicates.
        cache: a `ScoreCache`, True (the store's ``activelearning.db``) or False.
        batch_size: images scored between cache writes / progress reports / cancel checks.
        progress: ``progress(done, total)`` after each batch.
        cancel: set it to stop with `RankingCancelled`.

    Raises:
        ValueError: unknown strategy, a model-based strategy without ``predictor``, bad arguments.
        NotFoundError: an unknown image id in ``pool``.
    """
    t0 = time.perf_counter()
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if strat.needs_model and predictor is None:
        raise ValueError(f"strategy {strat.name!r} needs a trained model")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if diversity < 0:
        raise ValueError(f"diversity must be >= 0, got {diversity}")
    records = store.list_images()
    order = {r.id: n for n, r in enumerate(records)}
    names = {r.id: r.name for r in records}
    if pool is None:
        ids = [r.id for r in records if r.label_state != "final"]
    else:
        ids = list(dict.fromkeys(pool))
        for image_id in ids:
            if image_id not in order:
                store.get_image(image_id)  # NotFoundError
    model = getattr(predictor, "model", None) if strat.needs_model else None
    version = getattr(predictor, "version", None) if strat.needs_model else None
    score_cache: ScoreCache | None
    if isinstance(cache, ScoreCache):
        score_cache = cache
    elif cache:
        score_cache = ScoreCache(data_folder(store))
    else:
        score_cache = None
    use_cache = score_cache is not None and strat.needs_model and model is not None and version is not None

    ctx = ScoringContext(load=store.load_image, predictor=predictor if strat.needs_model else None, order=order)
    if strat.batch_mode:
        try:
            return _rank_batch_mode(strat, ctx, ids, records, names, limit, progress, cancel, batch_size,
                                    score_cache if use_cache else None, model, version, t0)
        finally:
            if score_cache is not None and not isinstance(cache, ScoreCache):
                score_cache.close()
    values: dict[str, float] = {}
    from_cache: set[str] = set()
    descriptors: dict[str, np.ndarray] = {}
    scored = 0
    try:
        for start in range(0, len(ids), batch_size):
            if cancel is not None and cancel.is_set():
                raise RankingCancelled(f"ranking cancelled after {start} of {len(ids)} images")
            batch = ids[start : start + batch_size]
            hits: dict[str, float] = {}
            if use_cache:
                assert score_cache is not None and model is not None and version is not None
                hits = score_cache.get(model, version, strat.name, strat.params, batch)
            new: dict[str, float] = {}
            for image_id in batch:
                if image_id in hits:
                    values[image_id] = hits[image_id]
                    from_cache.add(image_id)
                else:
                    new[image_id] = values[image_id] = float(strat.score(image_id, ctx))
                if diversity > 0:
                    descriptors[image_id] = _descriptor(store, image_id, ctx, score_cache)
                ctx.forget(image_id)
            scored += len(new)
            if use_cache and new:
                assert score_cache is not None and model is not None and version is not None
                score_cache.put(model, version, strat.name, strat.params, new)
            if progress is not None:
                progress(min(start + batch_size, len(ids)), len(ids))
    finally:
        if score_cache is not None and not isinstance(cache, ScoreCache):
            score_cache.close()

    # Higher score first; ties in import order (stable, reproducible).
    ordered = sorted(ids, key=lambda i: (-values[i], order.get(i, len(order)), i))
    if diversity > 0 and ordered:
        picks = diverse_order(
            [values[i] for i in ordered], np.stack([descriptors[i] for i in ordered]),
            n=limit, weight=diversity, duplicate_threshold=duplicate_threshold,
        )
        ordered = [ordered[p] for p in picks]
    if limit is not None:
        ordered = ordered[: max(0, int(limit))]
    items = [
        RankedImage(i, names.get(i, i), values[i], n, i in from_cache) for n, i in enumerate(ordered, 1)
    ]
    return Ranking(strat.name, dict(strat.params), model, version, items, diversity, time.perf_counter() - t0, scored)


def batch_mode_labelled(records: Sequence[Any], candidates: Sequence[str]) -> list[Any]:
    """The image records a batch-mode strategy describes besides the candidates: every image with a
    final label (they place the clusters the candidates are picked from)."""
    wanted = set(candidates)
    return [r for r in records if r.label_state == "final" and r.id not in wanted]


def _rank_batch_mode(
    strat: Strategy, ctx: ScoringContext, ids: list[str], records: Sequence[Any], names: dict[str, str],
    limit: int | None, progress: Callable[[int, int], None] | None, cancel: threading.Event | None,
    batch_size: int, cache: ScoreCache | None, model: str | None, version: int | None, t0: float,
) -> Ranking:
    """A batch-mode strategy: every candidate's and labelled image's features first (from the
    cache, else one network pass each, in batches with progress, cancel and a cache write), then
    the strategy orders the candidates as a whole. The diversity penalty does not apply."""
    labelled = [r.id for r in batch_mode_labelled(records, ids)]
    everything = ids + labelled
    kind = strat.feature_kind
    from_cache: set[str] = set()
    scored = 0
    for start in range(0, len(everything), batch_size):
        if cancel is not None and cancel.is_set():
            raise RankingCancelled(f"ranking cancelled after {start} of {len(everything)} images")
        batch = everything[start : start + batch_size]
        hits: dict[str, np.ndarray] = {}
        if cache is not None and strat.needs_model:
            assert model is not None and version is not None
            hits = cache.get_features(model, version, kind, batch)
        new: dict[str, np.ndarray] = {}
        for image_id in batch:
            if image_id in hits:
                ctx.remember_description(image_id, hits[image_id])
                from_cache.add(image_id)
            elif strat.needs_model:
                new[image_id] = strat.describe(image_id, ctx)
            ctx.forget(image_id)
        scored += len(new)
        if cache is not None and new:
            assert model is not None and version is not None
            cache.put_features(model, version, kind, new)
        if progress is not None:
            progress(min(start + batch_size, len(everything)), len(everything))
    n = None if limit is None else max(0, int(limit))
    ordered, values = strat.order(ids, labelled, ctx, n)
    items = [RankedImage(i, names.get(i, i), values.get(i, 0.0), k, i in from_cache) for k, i in enumerate(ordered, 1)]
    return Ranking(strat.name, dict(strat.params), model, version, items, 0.0, time.perf_counter() - t0, scored)


def _descriptor(store: Datastore, image_id: str, ctx: ScoringContext, cache: ScoreCache | None) -> np.ndarray:
    stamp = ""
    if cache is not None:
        try:
            st = store.image_path(image_id).stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = ""
        if stamp:
            hit = cache.get_descriptor(image_id, stamp)
            if hit is not None:
                return hit
    vec = image_descriptor(ctx.volume(image_id).array)
    if cache is not None and stamp:
        cache.put_descriptor(image_id, stamp, vec)
    return vec
