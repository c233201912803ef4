"""The MONAI-Label-compatible `/logs/` and `/scoring/...`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from segloop.server.errors import ApiError
from segloop.server.monailabel.activelearning import _score_job, _strategy
from segloop.server.monailabel.common import (
    _current_models,
    _job_task,
    _jobs,
    _json_body,
    route,
)
from segloop.server.routes import Annotator, State, Viewer
from segloop.server.state import ServerState

# --- /logs, /scoring --------------------------------------------------------------------------


@route("GET", "/logs/")
def logs(
    state: State, _: Viewer, lines: Annotated[int, Query(ge=1, le=10000)] = 300,
    html: bool = False, text: bool = True, refresh: int = 0,
) -> PlainTextResponse:
    """The latest log lines of segloop's background jobs (training, scoring...), oldest first."""
    out: list[str] = []
    for job in state.jobs.list_jobs(limit=20):
        for item in state.jobs.log(job.id, offset=0, limit=None)[-lines:]:
            out.append(f"{item.get('time', '')} [{job.kind} {job.id}] {item.get('line', item.get('text', ''))}")
    out.sort()
    return PlainTextResponse("\n".join(out[-lines:]) + ("\n" if out else ""))


@route("GET", "/scoring/")
def scoring_status(state: State, _: Viewer, all: bool = False, check_if_running: bool = False) -> Any:
    if check_if_running:
        running = _jobs(state, "score", True)
        if not running:
            raise ApiError(404, "not_found", "no scoring task is running")
        return _job_task(running[0])
    jobs = _jobs(state, "score", False)
    if not jobs:
        raise ApiError(404, "not_found", "no scoring task found")
    return [_job_task(j) for j in jobs] if all else _job_task(jobs[0])


@route("DELETE", "/scoring/")
def scoring_stop(state: State, principal: Annotator) -> dict[str, Any]:
    """Cancel the caller's active scoring jobs (an admin: everyone's); ``{}`` when none was active."""
    last: dict[str, Any] = {}
    for job in _jobs(state, "score", True):
        if job.owner == principal.name or principal.has("admin"):
            last = _job_task(state.runner.cancel(job.id))
    return last


def _scoring_model(state: ServerState, params: dict[str, Any]) -> str:
    wanted = params.get("model")
    if wanted:
        return str(wanted)
    models = _current_models(state)
    if not models:
        raise ApiError(404, "not_found", "no trained model to score with")
    return str(models[0].name)


@route("POST", "/scoring/{method}")
async def scoring_run(method: str, request: Request, state: State, principal: Annotator) -> dict[str, Any]:
    """Start a background job that fills the score cache of ``method`` (a model-based strategy)."""
    params = await _json_body(request)
    strat = _strategy(method, params)
    if not strat.needs_model:
        raise ApiError(422, "invalid", f"strategy {strat.name!r} does not use the model: nothing to score")
    from segloop.server import scoring

    model = _scoring_model(state, params)
    version = await run_in_threadpool(scoring.check_model, state.store, model, strat)
    job = await run_in_threadpool(_score_job, state, model, version, strat, principal.name)
    return _job_task(job)


@route("GET", "/scoring/{method}")
async def scoring_scores(method: str, state: State, _: Viewer, model: str | None = None) -> dict[str, Any]:
    """segloop extension: the cached scores of ``method`` for the unlabelled pool (best first)
    and the images still without a score."""
    strat = _strategy(method, {})
    if not strat.needs_model:
        raise ApiError(422, "invalid", f"strategy {strat.name!r} does not use the model: it has no scores")
    name = _scoring_model(state, {"model": model})
    record = state.store.get_model(name)
    if record.current_version is None:
        raise ApiError(404, "not_found", f"model {name!r} has no trained version")
    everything = state.store.list_images()
    pool = [r.id for r in everything if r.label_state != "final"]
    version = int(record.current_version)

    def read() -> tuple[list[tuple[str, float]], list[str]]:
        if not strat.batch_mode:
            scores: dict[str, float] = state.score_cache().get(name, version, strat.name, strat.params, pool)
            return sorted(scores.items(), key=lambda kv: -kv[1]), [i for i in pool if i not in scores]
        # a batch-mode strategy (typiclust) orders the pool as a whole from every image's cached
        # features: no order until the pool and the labelled images are all described
        from segloop.activelearning.ranking import rank_pool
        from segloop.server import scoring

        pool_records = [r for r in everything if r.label_state != "final"]
        needed = [r.id for r in scoring.images_to_describe(strat, pool_records, everything)]
        described = scoring.cached_ids(state.score_cache(), name, version, strat, needed)
        missing = [i for i in needed if i not in described]
        if missing or not pool:
            return [], missing
        ranking = rank_pool(state.store, strat, predictor=scoring.CachedScoresOnly(name, version), pool=pool,
                            cache=state.score_cache())
        return [(i.image_id, i.score) for i in ranking.items], []

    ordered, missing = await run_in_threadpool(read)
    return {"strategy": strat.name, "params": strat.params, "model": name, "version": version,
            "scores": [{"id": i, "score": s} for i, s in ordered], "missing": missing}
