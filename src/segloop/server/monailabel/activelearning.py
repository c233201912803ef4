"""The MONAI-Label-compatible `/activelearning/{strategy}`: the next image to annotate."""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from segloop.jobs.records import Job
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.monailabel.common import (
    STRATEGY_ALIASES,
    Compat,
    _current_models,
    _image_info,
    _json_body,
    route,
)
from segloop.server.routes import Annotator, State
from segloop.server.state import ServerState

# --- /activelearning --------------------------------------------------------------------------


def _strategy(name: str, params: dict[str, Any]) -> Any:
    from segloop.activelearning import get_strategy
    from segloop.activelearning.strategies import STRATEGIES

    key = STRATEGY_ALIASES.get(name.strip().lower(), name.strip().lower())
    cls = STRATEGIES.get(key)
    if cls is None:
        raise ApiError(404, "unknown_strategy", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    sp = params.get("strategy_params")
    if not isinstance(sp, dict):
        sp = {k: v for k, v in params.items() if k in cls.defaults}
    if key == "random" and "seed" not in sp:
        sp = {**sp, "seed": secrets.randbelow(2**31)}  # a new draw per request, as MONAI Label's random
    try:
        return get_strategy(key, **sp)
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc


def _rank_random(state: ServerState, pool: list[str]) -> Any:
    from segloop.activelearning.ranking import rank_pool

    return rank_pool(state.store, _strategy("random", {}), pool=pool, limit=1, cache=False)


def _score_job(state: ServerState, model: str, version: int, strat: Any, owner: str) -> Job:
    """The score job of (model, version, strategy, params), started or joined — the same key and
    parameters ``GET /api/v1/next`` uses, so the two never score a pool twice at once."""
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    resource = score_resource(model, version, strat.name, strat.params)
    latest = scoring.latest_job(state.jobs, resource)
    if latest is not None and latest.active:
        return latest
    job, _started = scoring.start_or_join(
        state.runner, scoring.job_params(model, version, strat, 0.0, state.settings.device), owner, resource)
    return job


def _model_ranking(state: ServerState, strat: Any, model: str, pool: list[Any], principal: Principal,
                   meta: dict[str, Any]) -> Any:
    """`GET /api/v1/next`'s rule (`segloop.server.scoring`) for one model-based pick, run in a
    worker thread: a ranking from the cache, or after scoring the few uncached images now; or
    None with ``meta`` saying why (the score job started or joined, or the strategy unusable)."""
    from segloop.activelearning.ranking import rank_pool
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    try:
        version = scoring.check_model(state.store, model, strat)
    except ApiError as exc:
        meta.update(fallback="random", reason=exc.message)
        return None
    ids = [r.id for r in pool]
    needed = scoring.images_to_describe(strat, pool, state.store.list_images())
    hits = scoring.cached_ids(state.score_cache(), model, version, strat, [r.id for r in needed])
    plan = scoring.plan(strat, needed, hits, state.settings.score_sync_passes)
    meta.update(model=model, version=version, cached=plan.cached, unscored=plan.unscored)
    if plan.action == "job":
        latest = scoring.latest_job(state.jobs, score_resource(model, version, strat.name, strat.params))
        if latest is not None and not latest.active and scoring.failed_recently(latest):
            meta.update(fallback="random", scoring_job=latest.id, reason=f"scoring failed: {latest.error}")
            return None
        job = _score_job(state, model, version, strat, principal.name)
        meta.update(fallback="random", scoring_job=job.id, retry_after=scoring.retry_after(job, plan.cost),
                    reason=f"{plan.unscored} of {len(pool)} images have no cached {strat.name} score yet; "
                    "a background scoring job fills the cache")
        return None
    if plan.action == "score":
        if strat.name == "mc-dropout":  # dropout switched on: never on the predictor clicks share
            from segloop.ml.predictor import Predictor

            predictor: Any = Predictor.load(state.store, model, version, device=state.settings.device)
        else:
            predictor = state.predictors.get(model, version)
    else:
        predictor = scoring.CachedScoresOnly(model, version)
    try:
        ranking = rank_pool(state.store, strat, predictor=predictor, pool=ids, limit=1, cache=state.score_cache())
    except ValueError as exc:
        meta.update(fallback="random", reason=str(exc))
        return None
    meta["scored_now"] = ranking.scored
    return ranking


@route("POST", "/activelearning/{strategy}")
async def activelearning(strategy: str, request: Request, state: State, cs: Compat, principal: Annotator) -> dict[str, Any]:
    """The next image to annotate among those without a final label; ``{}`` when none is left.

    Model-based strategies (entropy, mc-dropout, tta; ``epistemic`` = mc-dropout) follow
    ``GET /api/v1/next`` (`segloop.server.scoring`): cached scores of the model's current
    version, the few uncached images scored now. Where ``/next`` would answer 202 (a scoring
    job fills the cache) or 409/422 (scoring failed, strategy unusable for the model), this
    answers a random image marked ``"fallback": "random"`` with the reason and the job id:
    MONAI Label's clients know no 202."""
    params = await _json_body(request)
    strat = _strategy(strategy, params)
    pool = [r for r in await run_in_threadpool(state.store.list_images) if r.label_state != "final"]
    if not pool:
        return {}
    meta: dict[str, Any] = {"strategy": strat.name, "params": strat.params, "pool": len(pool)}
    ranking = None
    if strat.needs_model:
        wanted = params.get("model")
        model = str(wanted) if wanted else next((m.name for m in _current_models(state)), None)
        if model is None:
            meta["fallback"], meta["reason"] = "random", "no trained model yet"
        else:
            await run_in_threadpool(state.store.get_model, model)  # 404 for an unknown model
            ranking = await state.pool.run(_model_ranking, state, strat, model, pool, principal, meta)
    final = ranking if ranking is not None else await run_in_threadpool(_rank_random, state, [r.id for r in pool])
    if not final.items:
        return {}
    top = final.items[0]
    rec = await run_in_threadpool(state.store.get_image, top.image_id)
    client = params.get("client_id")
    cs.update_info(f"image:{rec.id}", {"strategy": {strat.name: {"ts": int(time.time()), "client_id": client}}})
    score = None if meta.get("fallback") or not strat.needs_model else top.score
    return {**_image_info(state, rec, cs), "score": score, "segloop": meta}
