"""Routes that use the model: models, inference, evaluation, jobs (interactive sessions:
`segloop.server.routes_sessions`; which image next: `segloop.server.routes_next`).

Inference, clicks and single-image evaluations run in the bounded `WorkerPool` (429 when it is
full); training, batch inference, model evaluation and scoring run as background jobs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from segloop.imaging.nifti import write_nifti
from segloop.imaging.volume import Volume
from segloop.jobs.records import JOB_KINDS, JOB_STATES, JobRejected
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.routes import (
    NIFTI,
    NIFTI_RESPONSE,
    Admin,
    Annotator,
    ModelName,
    Reviewer,
    State,
    Viewer,
    finite,
)
from segloop.server.routes_sessions import _label_response
from segloop.server.state import ServerState

router = APIRouter(prefix="/api/v1")


def _model_dict(record: Any, state: ServerState) -> dict[str, Any]:
    d = finite(record.to_dict())
    active = [
        j.id
        for j in state.jobs.list_jobs(state="running", kind="train", limit=50)
        + state.jobs.list_jobs(state="queued", kind="train", limit=50)
        if j.params.get("model") == record.name
    ]
    d["training_job"] = active[0] if active else None
    return d


# --- models --------------------------------------------------------------------------------------


@router.get("/architectures", tags=["models"])
def architectures(_: Viewer) -> dict[str, Any]:
    """Network architectures a training request may name (``config.arch``) with their defaults."""
    from segloop.ml.networks import architectures as archs
    from segloop.ml.networks import network_config

    return {"items": [{"name": a, "defaults": network_config(None, a)} for a in archs()]}


@router.get("/models", tags=["models"])
def list_models(state: State, _: Viewer) -> dict[str, Any]:
    return {"items": [_model_dict(m, state) for m in state.store.list_models()]}


@router.get("/models/{name}", tags=["models"])
def get_model(name: ModelName, state: State, _: Viewer) -> dict[str, Any]:
    return _model_dict(state.store.get_model(name), state)


class SelectBody(BaseModel):
    version: int = Field(ge=1, le=10**9)


@router.post("/models/{name}/select", tags=["models"])
def select_version(name: ModelName, body: SelectBody, state: State, _: Admin) -> dict[str, Any]:
    """Make ``version`` the current version of the model (admin)."""
    record = state.store.set_current_version(name, body.version)
    state.bus.publish("model.version", {"model": name, "version": body.version, "current": True, "reason": "selected"})
    return _model_dict(record, state)


@router.post("/models/{name}/rollback", tags=["models"])
def rollback(name: ModelName, state: State, _: Admin) -> dict[str, Any]:
    """Make the version before the current one current (admin); 409 when there is none."""
    record = state.store.get_model(name)
    older = sorted(v.version for v in record.versions if record.current_version is None or v.version < record.current_version)
    if not older:
        raise ApiError(409, "no_previous_version", f"model {name!r} has no version before {record.current_version}")
    record = state.store.set_current_version(name, older[-1])
    state.bus.publish("model.version", {"model": name, "version": older[-1], "current": True, "reason": "rollback"})
    return _model_dict(record, state)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields: arch, network, epochs, ...")
    fine_tune: int | None = Field(None, ge=1, description="start from this version's weights")
    revisions: list[tuple[str, int]] | None = Field(None, description="[image_id, revision] pairs; default: final labels")


def _check_model_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise ApiError(422, "invalid", f"model name {name!r} must be letters, digits, '.', '_' or '-' (max 128)")


@router.post("/models/{name}/train", tags=["models"], status_code=202)
def start_training(name: ModelName, body: TrainBody, state: State, principal: Admin) -> dict[str, Any]:
    """Start a training job (admin). The configuration is validated now (422 naming the field).
    One training job per model at a time: a second request → 409 with the running job's id."""
    from segloop.ml.training import TrainConfig

    _check_model_name(name)
    try:
        config = TrainConfig.from_dict(dict(body.config))
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    if config.workers > 1:
        from segloop.jobs.executors import is_ray_mode

        if not is_ray_mode(state.settings.job_mode):
            raise ApiError(422, "invalid", f"workers {config.workers}: a training on several workers runs on Ray; this "
                           f"server's jobs are local ({state.settings.job_mode}; start it with --jobs ray or ray://HOST:PORT)")
    if body.fine_tune is not None:
        state.store.get_model(name).version(body.fine_tune)
    if not state.store.get_schema().foreground:
        raise ApiError(422, "invalid", "the label schema has no foreground class to train on")
    params = {
        "model": name,
        "config": config.to_dict(),
        "fine_tune": body.fine_tune,
        "revisions": [list(r) for r in body.revisions] if body.revisions is not None else None,
        "device": state.settings.device,
    }
    job = state.runner.submit("train", params, owner=principal.name)
    return job.to_dict()


class InferBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str = Field(min_length=1, max_length=256)
    version: int | None = Field(None, ge=1)
    save: bool = False
    base_revision: int | None = Field(
        None, ge=1, description="when saving: the revision this replaces (default: the latest)"
    )


@router.post("/models/{name}/infer", tags=["models"], response_class=Response, responses=NIFTI_RESPONSE)
async def infer(name: ModelName, body: InferBody, state: State, principal: Annotator) -> Response:
    """Automatic segmentation of one image; the label comes back as gzip NIfTI (headers: model,
    version, seconds, and ``X-Segloop-Revision`` when ``save`` stored it as a draft revision)."""

    def work() -> tuple[Any, Any]:
        image = state.store.load_image(body.image_id)
        predictor = state.predictors.get(name, body.version)
        pred = predictor.predict(image)
        rev = None
        if body.save:
            base = body.base_revision
            if base is None:
                base = state.store.get_image(body.image_id).latest_revision
            rev = state.store.save_label(
                body.image_id,
                pred.label,
                author=principal.name,
                source=f"model:{pred.model}@{pred.version}",
                status="draft",
                base_revision=base,
            )
        return pred, rev

    state.store.get_model(name)
    pred, rev = await state.pool.run(work)
    extra = {}
    if rev is not None:
        extra["X-Segloop-Revision"] = str(rev.revision)
        state.bus.publish("label.revision", rev.to_dict())
    return await run_in_threadpool(_label_response, pred, extra)


# --- evaluation ----------------------------------------------------------------------------------


class EvaluateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str = Field(min_length=1, max_length=256)
    reference_revision: int | None = Field(None, ge=1, description="default: the image's latest final revision")
    revision: int | None = Field(None, ge=1, description="evaluate this label revision ...")
    model: str | None = Field(None, min_length=1, max_length=128, description="... or this model's prediction")
    version: int | None = Field(None, ge=1)


def _reference(state: ServerState, image_id: str, wanted: int | None) -> Any:
    if wanted is not None:
        return state.store.get_revision(image_id, wanted)
    finals = [r for r in state.store.list_revisions(image_id) if r.status == "final"]
    if not finals:
        raise ApiError(422, "no_reference", f"image {image_id!r} has no final revision; give reference_revision")
    return finals[-1]


@router.post("/evaluations", tags=["evaluation"], status_code=201)
async def evaluate(body: EvaluateBody, state: State, principal: Annotator) -> dict[str, Any]:
    """Compare a label revision, or a model version's prediction, with a reference revision of one
    image: Dice/IoU/HD95 per class and a discrepancy map (fetch it from ``discrepancy_url``).
    Recorded in the evaluation history."""
    from segloop.metrics import compare_labels, discrepancy_legend, discrepancy_map

    if (body.revision is None) == (body.model is None):
        raise ApiError(422, "invalid", "give exactly one of 'revision' and 'model'")
    ref_rev = await run_in_threadpool(_reference, state, body.image_id, body.reference_revision)

    def work() -> dict[str, Any]:
        ref = state.store.load_label(body.image_id, ref_rev.revision)
        params: dict[str, Any] = {"image_id": body.image_id, "reference_revision": ref_rev.revision}
        if body.model is not None:
            predictor = state.predictors.get(body.model, body.version)
            pred_vol = predictor.predict(state.store.load_image(body.image_id)).label
            params.update(model=body.model, version=predictor.version)
            kind = "model"
        else:
            assert body.revision is not None
            pred_vol = state.store.load_label(body.image_id, body.revision)
            params.update(revision=body.revision)
            kind = "revision"
        schema = state.store.get_schema()
        names = {c.value: c.name for c in schema.foreground}
        pred = np.asarray(pred_vol.array)
        ref_arr = np.asarray(ref.array)
        result = finite(compare_labels(pred, ref_arr, names, ref.spacing))
        values = sorted(names)
        dmap = discrepancy_map(pred, ref_arr, values)
        eid = uuid.uuid4().hex
        out = Path(state.settings.data) / "evaluations" / f"{eid}.nii.gz"
        write_nifti(Volume(dmap, ref.affine), out, dtype=np.uint8)
        result["legend"] = finite(discrepancy_legend(values, names))
        return state.jobs.add_evaluation(
            kind, params, result, discrepancy=str(out), author=principal.name, evaluation_id=eid
        )

    record = await state.pool.run(work)
    state.bus.publish("evaluation", {"id": record["id"], **record["params"]})
    return _evaluation_out(record)


def _evaluation_out(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "discrepancy_path"}
    out["discrepancy_url"] = f"/api/v1/evaluations/{record['id']}/discrepancy" if record["has_discrepancy"] else None
    return out


class ModelEvaluateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1)
    image_ids: list[str] | None = Field(None, max_length=100000)


@router.post("/models/{name}/evaluate", tags=["evaluation"], status_code=202)
def evaluate_model_job(name: ModelName, body: ModelEvaluateBody, state: State, principal: Reviewer) -> dict[str, Any]:
    """Evaluate a model version on the final labels (or the given images) as a background job;
    the result lands in the evaluation history."""
    record = state.store.get_model(name)
    record.version(body.version)
    job = state.runner.submit(
        "evaluate",
        {"model": name, "version": body.version, "image_ids": body.image_ids, "author": principal.name},
        owner=principal.name,
    )
    return job.to_dict()


@router.get("/evaluations", tags=["evaluation"])
def list_evaluations(
    state: State,
    _: Viewer,
    image_id: str | None = None,
    model: str | None = None,
    kind: Literal["model", "revision", "model-dataset"] | None = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The evaluation history, newest first."""
    items = state.jobs.list_evaluations(offset=offset, limit=limit, kind=kind, image_id=image_id, model=model)
    return {"items": [_evaluation_out(e) for e in items]}


EvaluationId = Annotated[str, PathParam(min_length=1, max_length=64)]


@router.get("/evaluations/{evaluation_id}", tags=["evaluation"])
def get_evaluation(evaluation_id: EvaluationId, state: State, _: Viewer) -> dict[str, Any]:
    return _evaluation_out(state.jobs.get_evaluation(evaluation_id))


@router.get("/evaluations/{evaluation_id}/discrepancy", tags=["evaluation"], response_class=Response, responses=NIFTI_RESPONSE)
def get_discrepancy(evaluation_id: EvaluationId, state: State, _: Viewer) -> Response:
    """The discrepancy map (per class: 3k+1 agree, 3k+2 false positive, 3k+3 false negative)."""
    record = state.jobs.get_evaluation(evaluation_id)
    path = record.get("discrepancy_path")
    if not path or not Path(path).is_file():
        raise ApiError(404, "not_found", f"evaluation {evaluation_id!r} has no discrepancy map")
    return FileResponse(path, media_type=NIFTI, filename=f"discrepancy-{evaluation_id}.nii.gz")


# --- jobs ----------------------------------------------------------------------------------------

JobKindQ = Literal["train", "infer-batch", "evaluate", "score"]
JobStateQ = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
assert set(JOB_KINDS) == set(JobKindQ.__args__) and set(JOB_STATES) == set(JobStateQ.__args__)  # type: ignore[attr-defined]


@router.get("/jobs", tags=["jobs"])
def list_jobs(
    state: State,
    _: Viewer,
    job_state: Annotated[JobStateQ | None, Query(alias="state")] = None,
    kind: JobKindQ | None = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Jobs, newest first (all clients see the same list)."""
    items = state.jobs.list_jobs(state=job_state, kind=kind, offset=offset, limit=limit)
    return {"items": [j.to_dict() for j in items], "total": state.jobs.count(state=job_state, kind=kind)}


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["infer-batch", "evaluate", "score"]
    params: dict[str, Any] = Field(default_factory=dict)


@router.post("/jobs", tags=["jobs"], status_code=202)
def submit_job(body: JobBody, state: State, principal: Reviewer) -> dict[str, Any]:
    """Start a batch job (reviewer): ``infer-batch`` {model, version?, image_ids?, save?},
    ``evaluate`` {model, version?, image_ids?}, ``score`` {strategy, model (model-based
    strategies), strategy_params?, image_ids? (default: every image without a final label),
    diversity?} — scores go to the active-learning cache that `GET /next` reads, for the model's
    current version; one score job per (model, version, strategy, parameters): a second → 409.
    Training: `POST /models/{name}/train`."""
    p = dict(body.params)
    if body.kind == "score":
        return _submit_score(p, state, principal)
    model = p.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "invalid", f"{body.kind} needs params.model")
    record = state.store.get_model(model)
    version = p.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ApiError(422, "invalid", "params.version must be an integer")
    record.version(version)
    if record.current_version is None and version is None:
        raise ApiError(422, "invalid", f"model {model!r} has no trained version yet")
    ids = p.get("image_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ApiError(422, "invalid", "params.image_ids must be a list of image ids")
    for i in ids or []:
        state.store.get_image(i)
    allowed = {"infer-batch": {"model", "version", "image_ids", "save"}, "evaluate": {"model", "version", "image_ids"}}[body.kind]
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ApiError(422, "invalid", f"unknown {body.kind} parameter(s): {', '.join(unknown)}")
    if body.kind == "infer-batch":
        p["save"] = bool(p.get("save", True))
    p["author"] = principal.name
    try:
        job = state.runner.submit(body.kind, p, owner=principal.name)
    except JobRejected as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    return job.to_dict()


def _submit_score(p: dict[str, Any], state: ServerState, principal: Principal) -> dict[str, Any]:
    from segloop.activelearning import get_strategy
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    unknown = sorted(set(p) - {"strategy", "model", "strategy_params", "image_ids", "diversity"})
    if unknown:
        raise ApiError(422, "invalid", f"unknown score parameter(s): {', '.join(unknown)}")
    name = p.get("strategy")
    if not isinstance(name, str) or not name:
        raise ApiError(422, "invalid", "score needs params.strategy")
    sp = p.get("strategy_params") or {}
    if not isinstance(sp, dict):
        raise ApiError(422, "invalid", "params.strategy_params must be an object")
    try:
        strat = get_strategy(name, **sp)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    diversity = p.get("diversity", 0.0)
    if isinstance(diversity, bool) or not isinstance(diversity, int | float) or not 0 <= diversity <= 10:
        raise ApiError(422, "invalid", "params.diversity must be a number in [0, 10]")
    ids = p.get("image_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 100000):
        raise ApiError(422, "invalid", "params.image_ids must be a list of image ids")
    for i in ids or []:
        state.store.get_image(i)
    model = p.get("model")
    version: int | None = None
    if strat.needs_model:
        if not isinstance(model, str) or not model:
            raise ApiError(422, "invalid", f"strategy {strat.name!r} needs params.model")
        version = scoring.check_model(state.store, model, strat)
    elif model is not None:
        raise ApiError(422, "invalid", f"strategy {strat.name!r} uses no model; leave params.model out")
    params: dict[str, Any] = {
        "model": model,
        "version": version,
        "strategy": strat.name,
        "strategy_params": dict(strat.params),
        "diversity": float(diversity),
        "pool": ids,
        "device": state.settings.device,
    }
    # the same key as `GET /next` uses for the whole pool, so the two never score it twice at once
    key = dict(strat.params) if ids is None else {**strat.params, "pool": sorted(ids)}
    resource = score_resource(str(model), version or 0, strat.name, key)
    job = state.runner.submit("score", params, owner=principal.name, resource=resource)
    return job.to_dict()


JobId = Annotated[str, PathParam(min_length=1, max_length=64)]


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(
    job_id: JobId, state: State, _: Viewer, metrics: bool = True
) -> dict[str, Any]:
    """One job with its metrics stream (per-epoch loss and validation Dice for training)."""
    return state.jobs.get(job_id, with_metrics=metrics).to_dict(with_metrics=metrics)


@router.get("/jobs/{job_id}/log", tags=["jobs"])
def get_job_log(
    job_id: JobId,
    state: State,
    _: Viewer,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Log lines after ``offset`` (the last line's ``seq``), for tailing."""
    return {"items": state.jobs.log(job_id, offset=offset, limit=limit)}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: JobId, state: State, principal: Annotator) -> dict[str, Any]:
    """Cancel a queued or running job (its owner, or an admin); from any client."""
    job = state.jobs.get(job_id)
    if job.owner != principal.name and not principal.has("admin"):
        raise ApiError(403, "forbidden", "only the job's owner or an admin may cancel it")
    if not job.active:
        raise ApiError(409, "job_finished", f"job {job_id} is already {job.state}", state=job.state)
    return state.runner.cancel(job_id).to_dict()
