"""Interactive session routes: open, clicks, undo/redo, an edited mask, save, close.

A session keeps one image pre-processed for one model version (`segloop.ml.predictor.InteractiveSession`);
its steps run in the bounded `WorkerPool` (429 when it is full). Prompts beyond clicks (box, lasso,
scribbles) are in `segloop.server.routes_prompts`.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.maskcodec import (
    BOX_MEDIA_TYPE,
    encode_box,
    format_box,
    label_nifti_gz,
    label_with_box,
    parse_box,
)
from segloop.server.routes import NIFTI, NIFTI_RESPONSE, Annotator, State, Viewer
from segloop.server.state import ServerState
from segloop.server.uploads import receive_multipart

router = APIRouter(prefix="/api/v1")

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
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "box": {
                            "type": "string",
                            "description": "x0,x1,y0,y1,z0,z1: `file` holds only this box's voxels (uint8, x fastest, "
                            "gzip or not); the rest of the mask stays the session's",
                        },
                    },
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
    part of the uploaded mask and no longer steer the model. With a ``box`` field
    (``x0,x1,y0,y1,z0,z1``), ``file`` holds only that box's voxels (uint8, x fastest, as the compact
    click responses; gzip or not) and the rest of the mask stays as it is: what the web app sends
    for a brush stroke. Returns the session (``undo_depth``, ``redo_depth``, ``changed_voxels``)."""
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

        box = received.fields.get("box")

        def whole_label() -> np.ndarray:
            try:
                volume = read_nifti(files[0])
            except Exception as exc:
                raise ApiError(422, "invalid_image", str(exc).replace(str(folder) + "/", "")) from exc
            record = state.store.get_image(entry.image_id)
            try:
                data, _ = _prepare_label(record, volume, state.store.get_schema())
            except (ValidationError, GeometryError) as exc:
                raise ApiError(422, "invalid_label", str(exc)) from exc
            return data

        def work() -> dict[str, Any]:
            data = whole_label() if box is None else None
            values = state.store.get_schema().values
            with entry.lock:
                if entry.closed:
                    raise ApiError(404, "not_found", f"session {session_id!r} was closed")
                current = np.asarray(entry.session.prediction.label.array)
                region = None
                if data is None:
                    try:
                        data = label_with_box(current, str(box), files[0].read_bytes(), values)
                    except ValueError as exc:
                        raise ApiError(422, "invalid_label", str(exc)) from exc
                    region = parse_box(str(box))  # only the box can differ: check and compare only it
                where = region if region is not None else (slice(None),) * 3
                changed = int(np.count_nonzero(data[where] != current[where]))
                try:
                    pred = entry.session.set_label(Volume(data, entry.session.image.affine), box=region)
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
