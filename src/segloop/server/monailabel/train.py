"""The MONAI-Label-compatible `/train/...`: start, status and stop of training jobs."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from segloop.jobs.records import JobConflict
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.monailabel.common import (
    _job_task,
    _jobs,
    _json_body,
    route,
)
from segloop.server.routes import Admin, State, Viewer
from segloop.server.state import ServerState
from segloop.store.errors import NotFoundError

# --- /train -----------------------------------------------------------------------------------

_TRAIN_KEYS = {"max_epochs": "epochs", "epochs": "epochs", "train_batch_size": "batch_size",
               "batch_size": "batch_size", "learning_rate": "lr", "lr": "lr", "val_split": "val_split"}


def _train_config(params: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """TrainConfig fields from MONAI Label train params: segloop's own field names, plus
    ``max_epochs``, ``train_batch_size``, ``learning_rate``; ``config`` may hold them too."""
    from dataclasses import fields

    from segloop.ml.training import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    cfg: dict[str, Any] = dict(params.get("config") or {}) if isinstance(params.get("config"), dict) else {}
    ignored = []
    for k, v in params.items():
        if k in ("config", "client_id", "from_scratch", "fine_tune"):
            continue
        if k in _TRAIN_KEYS:
            cfg[_TRAIN_KEYS[k]] = v
        elif k in names:
            cfg[k] = v
        else:
            ignored.append(k)
    return cfg, ignored, bool(params.get("from_scratch"))


def _start_training(state: ServerState, name: str, params: dict[str, Any], principal: Principal) -> dict[str, Any]:
    from segloop.server.routes_ml import TrainBody, start_training

    cfg, ignored, scratch = _train_config(params)
    fine_tune = None
    try:
        record = state.store.get_model(name)
        if not scratch and record.current_version is not None:
            fine_tune = record.current_version  # "update model": continue from the current version
    except NotFoundError:
        pass
    job = start_training(name, TrainBody(config=cfg, fine_tune=fine_tune, revisions=None), state, principal)
    task = _job_task(state.jobs.get(job["id"]))
    task["segloop"].update(ignored_params=ignored, fine_tune=fine_tune)
    return task


@route("GET", "/train/")
def train_status(state: State, _: Viewer, all: bool = False, check_if_running: bool = False) -> Any:
    """``check_if_running=true``: 200 with the running training task, 404 when none runs.
    Otherwise the latest training task (``all=true``: all of them)."""
    if check_if_running:
        running = _jobs(state, "train", True)
        if not running:
            raise ApiError(404, "not_found", "no training task is running")
        return _job_task(running[0])
    jobs = _jobs(state, "train", False)
    if not jobs:
        raise ApiError(404, "not_found", "no training task found")
    return [_job_task(j) for j in jobs] if all else _job_task(jobs[0])


@route("POST", "/train/{model}")
async def train_model(model: str, request: Request, state: State, principal: Admin) -> dict[str, Any]:
    """Train a new version of segloop model ``model`` (created when missing) as a background job;
    an existing model continues from its current version unless ``from_scratch`` is true."""
    params = await _json_body(request)
    return await run_in_threadpool(_start_training, state, model, params, principal)


@route("POST", "/train/")
async def train_all(request: Request, state: State, principal: Admin) -> dict[str, Any]:
    """Train every segloop model (params may hold per-model sections ``{"<model>": {...}}``)."""
    params = await _json_body(request)
    models = state.store.list_models()
    if not models:
        raise ApiError(404, "not_found", "there is no model yet: POST /train/<name> creates one")
    out: dict[str, Any] = {}
    for m in models:
        section = params.get(m.name)
        p: dict[str, Any] = section if isinstance(section, dict) else {
            k: v for k, v in params.items() if not isinstance(v, dict) or k == "config"}
        try:
            out[m.name] = {"result": await run_in_threadpool(_start_training, state, m.name, p, principal), "detail": None}
        except (ApiError, JobConflict) as exc:
            out[m.name] = {"result": None, "detail": str(exc)}
    return out


@route("DELETE", "/train/")
def train_stop(state: State, principal: Admin) -> dict[str, Any]:
    """Cancel the running (and queued) training tasks; answers the (last) cancelled task, ``{}``
    when none was active. The model's current version stays the last good one."""
    active = _jobs(state, "train", True)
    last: dict[str, Any] = {}
    for job in active:
        last = _job_task(state.runner.cancel(job.id))
    return last
