"""Active learning in the server: what `GET /api/v1/next` does for each strategy.

``random`` and ``sequential`` use no model and answer at once. The model-based strategies
(``entropy``, ``mc-dropout``, ``tta``) need a score per pool image from the model's *current*
version; scoring costs one (entropy) or ``passes`` (mc-dropout, tta) forward passes per image,
about 0.5 s each for a small image on CPU, so a request never scores a large pool itself.

**The rule** (one request, model-based strategy, model ``M`` at its current version ``v``):

1. The pool is every image without a final label (the same pool as `segloop.activelearning`:
   drafts, e.g. predictions saved by ``infer-batch``, still need annotating).
2. Scores cached in ``activelearning.db`` for (image, ``M``, ``v``, strategy, parameters) are
   used as they are. A new model version is a new key, so its scores are computed afresh.
3. The cost of the images without a cached score is the sum over them of
   ``passes x max(1, voxels / 128^3)`` (an image larger than 128^3 voxels counts as that many
   small ones).
4. cost 0 → **200**, ranked from the cache.
5. cost <= ``ServerSettings.score_sync_passes`` (default 16: e.g. 16 small images for entropy,
   2 for mc-dropout with 8 passes) → scored now in the inference worker pool (shared with clicks
   and inference: **429** with ``Retry-After`` when it is full), then **200**.
6. otherwise → **202** with the id of the ``score`` job for (``M``, ``v``, strategy, parameters):
   started now, or the one already queued/running (one such job at a time). The job scores the
   pool in a child process, reports ``job.progress`` events and fills the cache; ask again when
   its ``job.state`` is ``done`` (``Retry-After`` estimates when). When the newest such job
   *failed* less than `FAILED_BACKOFF_S` seconds ago → **409** ``scoring_failed`` with its error
   (no retry storm from polling clients); later requests start a new job. Starting a job
   cancels the score jobs still running for the same model and strategy at older versions.

Saving labels never waits for scoring: the cache is its own SQLite file, scoring only reads the
store, and label saves do not use the inference worker pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from segloop.activelearning import STRATEGIES, Strategy
from segloop.activelearning.ranking import Ranking
from segloop.jobs.records import Job, JobConflict
from segloop.server.errors import ApiError
from segloop.server.routes import finite

REFERENCE_VOXELS = 128**3
FAILED_BACKOFF_S = 60.0

DESCRIPTIONS = {
    "random": "a stable random order of the images without a final label (score: null); `seed` changes it",
    "sequential": "images without a final label in import order (score: null)",
    "entropy": "mean voxel-wise predictive entropy of the model's automatic prediction (higher first)",
    "mc-dropout": "mutual information over stochastic passes with dropout active (model uncertainty; "
    "needs a network with dropout)",
    "tta": "label disagreement over flipped / intensity-perturbed passes (test-time augmentation)",
    "soft-dice": "the model's expected Dice loss of its own prediction (higher first)",
    "typiclust": "the most typical image of each cluster of the model's features that no label covers yet "
    "(the pool is ordered as a whole: few labels; score: typicality)",
}


def catalogue() -> list[dict[str, Any]]:
    """Every strategy `GET /next` offers, with whether it needs a model and its default parameters."""
    return [
        {
            "name": name,
            "description": DESCRIPTIONS.get(name, name),
            "needs_model": cls.needs_model,
            "params": dict(cls.defaults),
        }
        for name, cls in STRATEGIES.items()
    ]


def passes_per_image(strategy: Strategy) -> int:
    if not strategy.needs_model:
        return 0
    return int(strategy.params.get("passes", 1))


def image_cost(record: Any, passes: int) -> float:
    """Forward passes an image costs, counting an image of more than 128^3 voxels as several."""
    voxels = math.prod(int(s) for s in record.shape) * max(1, int(getattr(record, "channels", 1) or 1))
    return passes * max(1.0, voxels / REFERENCE_VOXELS)


class CachedScoresOnly:
    """Stands in for the predictor when every score is already cached: `rank_pool` then only
    needs the model name and version (for the cache key) and never runs the network."""

    def __init__(self, model: str, version: int) -> None:
        self.model = model
        self.version = version

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a score was not in the cache although it was a moment ago (needed {name!r})")


def images_to_describe(strategy: Strategy, pool: list[Any], everything: list[Any]) -> list[Any]:
    """The records a ranking must have a score (or features) for: the pool, and for a batch-mode
    strategy (``typiclust``) the labelled images too, whose features place the pool's clusters."""
    if not strategy.batch_mode:
        return pool
    from segloop.activelearning.ranking import batch_mode_labelled

    return pool + batch_mode_labelled(everything, [r.id for r in pool])


def cached_ids(cache: Any, model: str, version: int, strategy: Strategy, image_ids: list[str]) -> set[str]:
    """The images whose score (per-image strategies) or features (batch-mode ones) are in the cache."""
    if strategy.batch_mode:
        return set(cache.get_features(model, version, strategy.feature_kind, image_ids))
    return set(cache.get(model, version, strategy.name, strategy.params, image_ids))


@dataclass
class Plan:
    """What one `/next` request will do (decided by `plan`)."""

    action: str  # "rank" (all cached or no model), "score" (synchronously), "job"
    pool: list[Any]  # image records
    cached: int
    unscored: int
    cost: float


def plan(strategy: Strategy, pool: list[Any], cached_ids: set[str], sync_passes: int) -> Plan:
    missing = [r for r in pool if r.id not in cached_ids]
    passes = passes_per_image(strategy)
    cost = sum(image_cost(r, passes) for r in missing)
    if not strategy.needs_model or not missing:
        action = "rank"
    elif cost <= sync_passes:
        action = "score"
    else:
        action = "job"
    return Plan(action, pool, len(pool) - len(missing), len(missing), cost)


def ranking_items(ranking: Ranking, records: dict[str, Any], with_scores: bool) -> list[dict[str, Any]]:
    out = []
    for item in ranking.items:
        rec = records.get(item.image_id)
        if rec is None:
            continue
        out.append(
            {
                "image": finite(rec.to_dict()),
                "score": finite(float(item.score)) if with_scores else None,
                "rank": item.rank,
                "cached": item.cached if with_scores else False,
            }
        )
    return out


def latest_job(jobs: Any, resource: str) -> Job | None:
    items = jobs.list_jobs(kind="score", resource=resource, limit=1)
    return items[0] if items else None


def failed_recently(job: Job | None, now: datetime | None = None) -> bool:
    if job is None or job.state != "failed" or job.finished_at is None:
        return False
    now = now or datetime.now(UTC)
    finished = job.finished_at if job.finished_at.tzinfo else job.finished_at.replace(tzinfo=UTC)
    return (now - finished).total_seconds() < FAILED_BACKOFF_S


def start_or_join(runner: Any, params: dict[str, Any], owner: str, resource: str) -> tuple[Job, bool]:
    """The active score job for ``resource``: a new one (True) or the one already running (False).

    Starting one cancels the active score jobs of the same model and strategy for *other*
    versions: their scores would only serve a version that is no longer current."""
    try:
        job = runner.submit("score", params, owner=owner, resource=resource)
    except JobConflict as exc:
        return runner.get(exc.job_id), False
    for state in ("running", "queued"):
        for other in runner.list_jobs(kind="score", state=state, limit=100):
            p = other.params
            if (p.get("model") == params["model"] and p.get("strategy") == params["strategy"]
                    and p.get("version") != params["version"] and p.get("pool") is None):
                runner.cancel(other.id)
    return job, True


def retry_after(job: Job, unscored_cost: float) -> int:
    """Seconds until asking again is worthwhile: from the job's progress rate, else a guess of
    0.5 s per forward pass; between 1 and 60."""
    if job.started_at is not None and job.progress > 0.02:
        started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        left = elapsed / job.progress * (1.0 - job.progress)
    else:
        left = 0.5 * unscored_cost + (5.0 if job.state == "queued" else 0.0)
    return int(min(60, max(1, math.ceil(left))))


def job_params(
    model: str, version: int, strategy: Strategy, diversity: float, device: str | None
) -> dict[str, Any]:
    return {
        "model": model,
        "version": version,
        "strategy": strategy.name,
        "strategy_params": dict(strategy.params),
        "diversity": diversity,
        "device": device,
    }


def check_model(store: Any, model: str, strategy: Strategy) -> int:
    """The model's current version; 422 when it has none, or when mc-dropout meets a network
    trained without dropout (known from the version's stored config, without loading torch)."""
    record = store.get_model(model)  # 404 when unknown
    if record.current_version is None:
        raise ApiError(422, "no_trained_version", f"model {model!r} has no trained version yet")
    version = int(record.current_version)
    if strategy.name == "mc-dropout":
        config = record.version(version).config or {}
        network = config.get("network") or {}
        dropout = network.get("dropout")
        if dropout is not None and float(dropout or 0.0) <= 0.0:
            raise ApiError(
                422,
                "strategy_unavailable",
                f"model {model!r} version {version} was trained without dropout: mc-dropout needs it "
                "(use entropy or tta, or train with network.dropout > 0)",
            )
    return version


def strategy_from(name: str, seed: int | None, items: Sequence[str] = ()) -> Strategy:
    """The strategy ``name`` with ``items`` (``KEY=VALUE`` parameters, `parse_params`) and
    ``seed`` where it takes one; ApiError 422 naming an unknown strategy or a bad parameter."""
    from segloop.activelearning import get_strategy
    from segloop.activelearning.strategies import parse_params

    cls = STRATEGIES.get(name.strip().lower())
    try:
        params = parse_params(items)
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    if cls is not None and seed is not None and "seed" in cls.defaults:
        params["seed"] = seed
    try:
        return get_strategy(name, **params)
    except ValueError as exc:
        raise ApiError(
            422, "unknown_strategy", f"{exc}", available=list(STRATEGIES)
        ) from exc

