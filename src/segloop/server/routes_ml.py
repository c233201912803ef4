"""Routes that use the model: models, inference, interactive sessions, evaluation, jobs.

Inference, clicks and single-image evaluations run in the bounded `WorkerPool` (429 when it is
full); training, batch inference, model evaluation and scoring run as background jobs.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from segloop.imaging.nifti import read_nifti, write_nifti
from segloop.imaging.volume import Volume
from segloop.jobs.records import JOB_KINDS, JOB_STATES, JobRejected
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.maskcodec import BOX_MEDIA_TYPE, encode_box, format_box, label_nifti_gz
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
from segloop.server.state import ServerState
from segloop.server.uploads import receive_multipart

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


def _label_response(
    pred: Any, extra: dict[str, str] | None = None, body: bytes | None = None, media_type: str = NIFTI
) -> Response:
    """The mask of ``pred`` as gzip NIfTI with its model, version, timing and click count;
    ``body``: already encoded bytes (a session's incremental encoder)."""
    headers = {
        "X-Segloop-Model": str(pred.model),
        "X-Segloop-Version": str(pred.version),
        "X-Segloop-Seconds": f"{pred.seconds:.4f}",
        "X-Segloop-Clicks": str(len(getattr(pred, "clicks", ()) or ())),
    }
    headers.update(extra or {})
    return Response(label_nifti_gz(pred.label) if body is None else body, media_type=media_type, headers=headers)


def _session_mask(entry: Any, pred: Any) -> bytes:
    """A session's mask as gzip NIfTI, encoded incrementally with the step's hint
    (`SessionEntry.encode_prediction`): the encoder compares only the box the step changed (~3 ms
    on 256x256x128) when the previous step is the last mask it encoded."""
    return bytes(entry.encode_prediction(pred))


def _session_response(entry: Any, pred: Any) -> Response:
    """A session's mask response, encoded incrementally (only the blocks the step changed)."""
    return _label_response(pred, body=_session_mask(entry, pred))


SINCE_DESCRIPTION = (
    "Opt-in compact response: the session step whose mask the client holds (the `X-Segloop-Step` "
    "header of an earlier response; 0: none). When the server knows what changed since that step, "
    f"the response is `{BOX_MEDIA_TYPE}`: only the changed box, as the box's label voxels (uint8, "
    "x fastest like the NIfTI mask, one gzip member) with headers `X-Segloop-Base-Step` (the step "
    "the box applies on top of: `since`), `X-Segloop-Step` (the new step) and `X-Segloop-Box: "
    "x0,x1,y0,y1,z0,z1` (start, stop per image axis; an empty box: nothing changed). Otherwise "
    "(unknown or stale step, a change of most of the volume) the whole mask comes back as gzip "
    "NIfTI, with `X-Segloop-Step`. Without `since` the response is the whole mask, as always."
)
Since = Annotated[int | None, Query(ge=0, le=2**62, description=SINCE_DESCRIPTION)]
SESSION_MASK_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            NIFTI: {"schema": {"type": "string", "format": "binary"}},
            BOX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
        "description": f"gzip NIfTI-1 (the whole mask), or with `since` the changed box ({BOX_MEDIA_TYPE})",
    }
}


def _session_reply(entry: Any, pred: Any, since: int | None) -> Response:
    """The response to a session step: the whole mask (``since`` None: exactly as ever), or the
    box changed since step ``since`` when the client asked for it and the server knows it."""
    if since is None:
        return _session_response(entry, pred)
    entry.note(pred)
    step = int(getattr(pred, "step", 0) or 0)
    data = np.asarray(pred.label.array)
    box = entry.box_since(since, pred) if data.ndim == 3 and step else None
    if box is None:
        response = _session_response(entry, pred)
    else:
        response = _label_response(pred, body=encode_box(data, box), media_type=BOX_MEDIA_TYPE)
        response.headers["X-Segloop-Base-Step"] = str(since)
        response.headers["X-Segloop-Box"] = format_box(box)
    response.headers["X-Segloop-Step"] = str(step)
    return response


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


# --- interactive sessions ------------------------------------------------------------------------


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str = Field(min_length=1, max_length=256)
    model: str = Field(min_length=1, max_length=128)
    version: int | None = Field(None, ge=1)
    initial_revision: int | None = Field(None, ge=1, description="start from this label revision instead of the model's prediction")


@router.post("/sessions", tags=["sessions"], status_code=201)
async def open_session(body: SessionBody, state: State, principal: Annotator) -> dict[str, Any]:
    """Open an interactive session on (image, model): the image is pre-processed once and kept;
    the first prediction is made now. Idle sessions expire (``expires_in_seconds``)."""
    state.sessions.reserve()

    def work() -> Any:
        image = state.store.load_image(body.image_id)
        initial = state.store.load_label(body.image_id, body.initial_revision) if body.initial_revision else None
        predictor = state.predictors.get(body.model, body.version)
        try:
            session = predictor.session(image, initial)
        except ValueError as exc:
            raise ApiError(422, "invalid", str(exc)) from exc
        entry = state.sessions.add(body.image_id, body.model, predictor.version, principal.name, session)
        # the first full encoding, named by its step: the first click re-encodes (and compares) its box only
        entry.encode_prediction(session.prediction)
        return entry

    entry = await state.pool.run(work)
    return entry.info(state.sessions.idle_seconds)


def _session(state: ServerState, session_id: str, principal: Principal) -> Any:
    entry = state.sessions.get(session_id)
    if entry is None:
        raise ApiError(404, "not_found", f"session {session_id!r} does not exist (closed or expired)")
    if entry.owner != principal.name and not principal.has("admin"):
        raise ApiError(403, "forbidden", "this session belongs to another user")
    return entry


SessionId = Annotated[str, PathParam(min_length=1, max_length=64)]


@router.get("/sessions", tags=["sessions"])
def list_sessions(state: State, principal: Viewer) -> dict[str, Any]:
    items = [s.info(state.sessions.idle_seconds) for s in state.sessions.list()]
    if not principal.has("admin"):
        items = [s for s in items if s["owner"] == principal.name]
    return {"items": items}


@router.get("/sessions/{session_id}", tags=["sessions"])
def get_session(session_id: SessionId, state: State, principal: Viewer) -> dict[str, Any]:
    return _session(state, session_id, principal).info(state.sessions.idle_seconds)


@router.get("/sessions/{session_id}/label", tags=["sessions"], response_class=Response, responses=NIFTI_RESPONSE)
async def session_label(session_id: SessionId, state: State, principal: Viewer) -> Response:
    """The session's current mask as gzip NIfTI."""
    entry = _session(state, session_id, principal)
    return await run_in_threadpool(_session_response, entry, entry.session.prediction)


class ClickGroup(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str | int = Field(alias="class", description="class name, value, or 'background' (negative click)")
    points: list[list[int]] = Field(min_length=1, max_length=1000)


class ClicksBody(BaseModel):
    clicks: list[ClickGroup] = Field(min_length=1, max_length=100)


class SchemaCache:
    """The label schema for parsing clicks without a database read per click (~1 ms of a click's
    "prepare"). On SQLite the cached schema is used only while ``PRAGMA data_version`` of a private
    connection is unchanged: SQLite changes it whenever any other connection, of this process or
    another (an import run from the command line), commits, so a schema change is always seen —
    as is any other write, after which the schema is read again. Other databases: no cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: Any = None
        self._con: sqlite3.Connection | None = None
        self._version: int | None = None
        self._schema: Any = None

    @staticmethod
    def _sqlite_path(store: Any) -> str | None:
        url = getattr(store, "url", None) or getattr(getattr(store, "local", None), "url", None)
        if not isinstance(url, str) or not url.startswith("sqlite:///") or "?" in url:
            return None
        path = url[len("sqlite:///") :]
        return path if path and path != ":memory:" and Path(path).is_file() else None

    def get(self, store: Any) -> Any:
        with self._lock:
            if self._store is not store:
                if self._con is not None:
                    self._con.close()
                self._store, self._con, self._version, self._schema = store, None, None, None
                path = self._sqlite_path(store)
                if path is not None:
                    try:
                        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                    except sqlite3.Error:
                        self._con = None
            if self._con is None:
                return store.get_schema()
            try:
                version = int(self._con.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                return store.get_schema()
            if version == self._version and self._schema is not None:
                return self._schema
        # read after taking the version: a commit in between changes the version again, so a
        # schema read too early is never used past that commit
        schema = store.get_schema()
        with self._lock:
            if self._store is store:
                self._version, self._schema = version, schema
        return schema


_schemas = SchemaCache()


@router.post("/sessions/{session_id}/clicks", tags=["sessions"], response_class=Response, responses=SESSION_MASK_RESPONSE)
async def add_clicks(
    session_id: SessionId, body: ClicksBody, state: State, principal: Annotator, since: Since = None
) -> Response:
    """Add positive (a class) / negative (``background``) clicks; the updated mask comes back as
    gzip NIfTI (with ``since``: only the box the click changed, see that parameter). Clicks
    accumulate; `undo` takes back the last request."""
    from segloop.ml.clicks import parse_clicks

    entry = _session(state, session_id, principal)
    spec = [{"class": g.class_, "points": g.points} for g in body.clicks]
    t_route = time.perf_counter()

    def work() -> Any:
        t_worker = time.perf_counter()
        try:
            clicks = parse_clicks(spec, _schemas.get(state.store), entry.session.image.shape)
        except ValueError as exc:
            raise ApiError(422, "invalid_clicks", str(exc)) from exc
        with entry.lock:
            if entry.closed:
                raise ApiError(404, "not_found", f"session {session_id!r} was closed")
            t_click = time.perf_counter()
            try:
                pred = entry.session.add_clicks(clicks)
            except ValueError as exc:
                raise ApiError(422, "invalid_clicks", str(exc)) from exc
        t_encode = time.perf_counter()
        response = _session_reply(entry, pred, since)  # on the same worker: no second thread hop
        t_end = time.perf_counter()
        # where the server's time went (browsers show it in the network panel; benchmarks read it)
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={(b - a) * 1e3:.1f}"
            for name, a, b in (("queue", t_route, t_worker), ("prepare", t_worker, t_click),
                               ("click", t_click, t_encode), ("encode", t_encode, t_end))
        )
        return response

    return await state.pool.run(work)


@router.post("/sessions/{session_id}/undo", tags=["sessions"], response_class=Response, responses=SESSION_MASK_RESPONSE)
async def undo(session_id: SessionId, state: State, principal: Annotator, since: Since = None) -> Response:
    """Take back the last step (clicks or uploaded mask); the mask comes back as gzip NIfTI (with
    ``since``: only the box that changed, see that parameter)."""
    entry = _session(state, session_id, principal)

    def work() -> Response:
        with entry.lock:
            pred = entry.session.undo()
        return _session_reply(entry, pred, since)

    return await state.pool.run(work)


@router.post(
    "/sessions/{session_id}/redo",
    tags=["sessions"],
    response_class=Response,
    responses={**SESSION_MASK_RESPONSE, 409: {"description": "nothing to redo"}},
)
async def redo(session_id: SessionId, state: State, principal: Annotator, since: Since = None) -> Response:
    """Re-apply the step (clicks or uploaded mask) the last undo took back; the mask comes back
    as gzip NIfTI (with ``since``: only the box that changed, see that parameter). 409 when there
    is nothing to redo: a new click or upload clears the redo steps."""
    entry = _session(state, session_id, principal)

    def work() -> Any:
        with entry.lock:
            if entry.closed:
                raise ApiError(404, "not_found", f"session {session_id!r} was closed")
            if not entry.session.redo_depth:
                raise ApiError(409, "nothing_to_redo", "nothing to redo in this session")
            pred = entry.session.redo()
        return _session_reply(entry, pred, since)

    return await state.pool.run(work)


SESSION_LABEL_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        },
    }
}


@router.put("/sessions/{session_id}/label", tags=["sessions"], openapi_extra=SESSION_LABEL_BODY)
async def put_session_label(session_id: SessionId, request: Request, state: State, principal: Annotator) -> dict[str, Any]:
    """Replace the session's current mask with an edited one (multipart ``file``: a NIfTI label
    on the image's grid with class values of the schema, checked as label saves are), e.g. after
    brush strokes. The next click refines on top of it, `undo` goes back to the mask before the
    upload, and a save stores it with source ``interactive``. Clicks made before the upload are
    part of the uploaded mask and no longer steer the model. Returns the session (``undo_depth``,
    ``redo_depth``, ``changed_voxels``)."""
    from segloop.imaging.errors import GeometryError
    from segloop.store.errors import ValidationError
    from segloop.store.local import _prepare_label  # the exact checks of label saves

    entry = _session(state, session_id, principal)
    folder = Path(tempfile.mkdtemp(prefix="session-label-", dir=Path(state.store.staging_dir())))
    try:
        received = await receive_multipart(request, folder, state.settings.max_upload_bytes)
        files = received.files_of("file")
        if len(files) != 1:
            raise ApiError(422, "invalid_upload", "send exactly one label file in the part named 'file'")

        def work() -> dict[str, Any]:
            try:
                volume = read_nifti(files[0])
            except Exception as exc:
                raise ApiError(422, "invalid_image", str(exc).replace(str(folder) + "/", "")) from exc
            record = state.store.get_image(entry.image_id)
            try:
                data, _ = _prepare_label(record, volume, state.store.get_schema())
            except (ValidationError, GeometryError) as exc:
                raise ApiError(422, "invalid_label", str(exc)) from exc
            with entry.lock:
                if entry.closed:
                    raise ApiError(404, "not_found", f"session {session_id!r} was closed")
                changed = int(np.count_nonzero(data != np.asarray(entry.session.prediction.label.array)))
                try:
                    pred = entry.session.set_label(Volume(data, entry.session.image.affine))
                except ValueError as exc:
                    raise ApiError(422, "invalid_label", str(exc)) from exc
                entry.note(pred)  # a later compact click response may span this step
                info = entry.info(state.sessions.idle_seconds)
            return {**info, "changed_voxels": changed}

        return await run_in_threadpool(work)
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)


class SessionSaveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_revision: int | None = Field(None, ge=1, description="the revision the user started from (None: the image has none)")
    status: Literal["draft", "final"] = "draft"


@router.post("/sessions/{session_id}/save", tags=["sessions"], status_code=201)
def save_session(session_id: SessionId, body: SessionSaveBody, state: State, principal: Annotator) -> dict[str, Any]:
    """Save the session's mask as a new revision (source ``interactive``); stale base → 409."""
    entry = _session(state, session_id, principal)
    if body.status == "final" and not principal.has("reviewer"):
        raise ApiError(403, "forbidden", "saving a final label needs the reviewer role")
    with entry.lock:
        label = entry.session.prediction.label
    rev = state.store.save_label(
        entry.image_id, label, author=principal.name, source="interactive", status=body.status, base_revision=body.base_revision
    )
    data = rev.to_dict()
    state.bus.publish("label.revision", data)
    return data


@router.delete("/sessions/{session_id}", tags=["sessions"])
def close_session(session_id: SessionId, state: State, principal: Annotator) -> dict[str, Any]:
    _session(state, session_id, principal)
    state.sessions.close(session_id)
    return {"closed": session_id}


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




# --- active learning -----------------------------------------------------------------------------


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
    model: Annotated[str | None, Query(min_length=1, max_length=128, description="needed by entropy, mc-dropout, tta")] = None,
    count: Annotated[int, Query(ge=1, le=100)] = 1,
    diversity: Annotated[float, Query(ge=0.0, le=10.0, description="near-duplicate penalty (0: plain score order)")] = 0.0,
    seed: Annotated[int | None, Query(ge=0, le=2**31, description="seed of random (and of mc-dropout/tta passes)")] = None,
) -> Any:
    """The next image(s) to annotate among the images without a final label, best first, with
    ``score`` (null for random/sequential, which use no model) and ``rank``.

    Model-based strategies (``entropy``, ``mc-dropout``, ``tta``; ``model=`` required) use the
    model's current version: 200 from the score cache; 200 after scoring the few images
    without a cached score in the inference pool (at most ``score_sync_passes`` forward passes);
    otherwise 202 with ``job_id`` of the score job (started or already running; follow its
    ``job.progress``/``job.state`` events and ask again). See `segloop.server.scoring`."""
    from segloop.activelearning.ranking import rank_pool
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    strat = scoring.strategy_from(strategy, seed)
    version: int | None = None
    if strat.needs_model:
        if model is None:
            raise ApiError(422, "invalid", f"strategy {strat.name!r} needs a model: add model=NAME")
        version = await run_in_threadpool(scoring.check_model, state.store, model, strat)

    def pool_and_hits() -> tuple[list[Any], set[str]]:
        pool = [r for r in state.store.list_images() if r.label_state != "final"]
        if not strat.needs_model or not pool:
            return pool, set()
        assert model is not None and version is not None
        hits = state.score_cache().get(model, version, strat.name, strat.params, [r.id for r in pool])
        return pool, set(hits)

    pool, hits = await run_in_threadpool(pool_and_hits)
    plan = scoring.plan(strat, pool, hits, state.settings.score_sync_passes)
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
