"""Active-learning routes: `GET /activelearning/strategies` and `GET /next` — which images to
annotate next, ranked with the shared model (the rule for cached, synchronous and job scoring:
`segloop.server.scoring`). The MONAI-Label-compatible `/activelearning/{strategy}` is in
`segloop.server.monailabel.activelearning`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from segloop.server.errors import ApiError
from segloop.server.routes import State, Viewer

router = APIRouter(prefix="/api/v1")


@router.get("/activelearning/strategies", tags=["active learning"])
def strategies(_: Viewer) -> dict[str, Any]:
    """The strategies `GET /next` offers: name, description, whether it needs a model
    (``model=``) and its default parameters."""
    from segloop.server.scoring import catalogue

    return {
        "available": catalogue(),
        "pending": [],
        "note": "model-based strategies answer from the score cache, score a small pool at once, "
        "or start a score job and answer 202 (see GET /next)",
    }


NEXT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "the pool is being scored: ``job_id`` names the score job; ask again when it is done"},
    409: {"description": "the last score job for this (model, version, strategy) failed moments ago"},
    429: {"description": "the inference workers are busy (scoring a small pool synchronously); see Retry-After"},
}


@router.get("/next", tags=["active learning"], responses=NEXT_RESPONSES)
async def next_images(
    state: State,
    principal: Viewer,
    strategy: Annotated[str, Query(min_length=1, max_length=64)] = "sequential",
    model: Annotated[str | None, Query(min_length=1, max_length=128, description="needed by the model-based strategies (typiclust, entropy, soft-dice, mc-dropout, tta)")] = None,
    count: Annotated[int, Query(ge=1, le=100)] = 1,
    diversity: Annotated[float, Query(ge=0.0, le=10.0, description="near-duplicate penalty (0: plain score order)")] = 0.0,
    seed: Annotated[int | None, Query(ge=0, le=2**31, description="seed of random (and of mc-dropout/tta passes)")] = None,
    param: Annotated[list[str] | None, Query(max_length=200, description="strategy parameter KEY=VALUE, repeatable "
                                             "(e.g. param=min_cluster=5&param=then=entropy; defaults: GET /activelearning/strategies)")] = None,
) -> Any:
    """The next image(s) to annotate among the images without a final label, best first, with
    ``score`` (null for random/sequential, which use no model) and ``rank``.

    Model-based strategies (``entropy``, ``mc-dropout``, ``tta``; ``model=`` required) use the
    model's current version: 200 from the score cache; 200 after scoring the few images
    without a cached score in the inference pool (at most ``score_sync_passes`` forward passes);
    otherwise 202 with ``job_id`` of the score job (started or already running; follow its
    ``job.progress``/``job.state`` events and ask again). See `segloop.server.scoring`.

    ``param=KEY=VALUE`` (repeatable) sets the strategy's parameters (values as JSON where they
    parse); scores, cached features and score jobs are kept per parameter set."""
    from segloop.activelearning.ranking import rank_pool
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    if param is not None and len(param) > 16:
        raise ApiError(422, "invalid", f"at most 16 param= items, got {len(param)}")
    strat = scoring.strategy_from(strategy, seed, param or ())
    version: int | None = None
    if strat.needs_model:
        if model is None:
            raise ApiError(422, "invalid", f"strategy {strat.name!r} needs a model: add model=NAME")
        version = await run_in_threadpool(scoring.check_model, state.store, model, strat)

    def pool_and_hits() -> tuple[list[Any], list[Any], set[str]]:
        everything = state.store.list_images()
        pool = [r for r in everything if r.label_state != "final"]
        if not strat.needs_model or not pool:
            return pool, pool, set()
        assert model is not None and version is not None
        needed = scoring.images_to_describe(strat, pool, everything)
        return pool, needed, scoring.cached_ids(state.score_cache(), model, version, strat, [r.id for r in needed])

    pool, needed, hits = await run_in_threadpool(pool_and_hits)
    plan = scoring.plan(strat, needed, hits, state.settings.score_sync_passes)
    records = {r.id: r for r in pool}
    ids = [r.id for r in pool]
    base: dict[str, Any] = {
        "strategy": strat.name,
        "params": dict(strat.params),
        "model": model if strat.needs_model else None,
        "version": version,
        "diversity": diversity,
        "remaining_unlabeled": len(pool),
        "pool": len(pool),
        "cached": plan.cached,
        "unscored": plan.unscored,
    }

    if plan.action == "job":
        assert model is not None and version is not None
        resource = score_resource(model, version, strat.name, strat.params)

        def start() -> tuple[Any, bool]:
            latest = scoring.latest_job(state.jobs, resource)
            if latest is not None and latest.active:
                return latest, False
            if scoring.failed_recently(latest):
                assert latest is not None
                raise ApiError(
                    409,
                    "scoring_failed",
                    f"scoring the pool with {strat.name!r} on {model!r} version {version} failed: {latest.error}; "
                    f"a new request after {int(scoring.FAILED_BACKOFF_S)} s starts a new score job",
                    job_id=latest.id,
                )
            params = scoring.job_params(model, version, strat, diversity, state.settings.device)
            return scoring.start_or_join(state.runner, params, principal.name, resource)

        job, started = await run_in_threadpool(start)
        wait = scoring.retry_after(job, plan.cost)
        body = {
            **base,
            "status": "scoring",
            "job_id": job.id,
            "job_started": started,
            "job": job.to_dict(),
            "retry_after": wait,
            "items": [],
        }
        return JSONResponse(body, status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}", "Retry-After": str(wait)})

    if plan.action == "score":
        assert model is not None and version is not None

        def score_now() -> Any:
            if strat.name == "mc-dropout":
                # MC dropout switches the network's dropout on: never on the predictor clicks share
                from segloop.ml.predictor import Predictor

                predictor = Predictor.load(state.store, model, version, device=state.settings.device)
            else:
                predictor = state.predictors.get(model, version)
            try:
                return rank_pool(state.store, strat, predictor=predictor, pool=ids, limit=count,
                                 diversity=diversity, cache=state.score_cache())
            except ValueError as exc:
                raise ApiError(422, "strategy_unavailable", str(exc)) from exc

        ranking = await state.pool.run(score_now)
    else:
        predictor_stub = scoring.CachedScoresOnly(model, version) if model is not None and version is not None else None

        def rank_cached() -> Any:
            return rank_pool(state.store, strat, predictor=predictor_stub, pool=ids, limit=count,
                             diversity=diversity, cache=state.score_cache())

        ranking = await run_in_threadpool(rank_cached)
    return {
        **base,
        "status": "ready",
        "source": "scored" if ranking.scored else ("cache" if strat.needs_model else "no-model"),
        "scored_now": ranking.scored,
        "seconds": round(ranking.seconds, 3),
        "items": scoring.ranking_items(ranking, records, with_scores=strat.needs_model),
    }
