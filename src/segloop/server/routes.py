"""The native REST API under ``/api/v1`` (see `segloop.server.app` for the route table)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from segloop import __version__
from segloop.imaging.nifti import nifti_bytes, read_nifti
from segloop.imaging.volume import middle_slice
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.state import ServerState, current_principal, require, server_state
from segloop.server.uploads import one_label_upload, receive_multipart
from segloop.store.filters import SeriesFilter
from segloop.store.ingest import IngestError, import_paths
from segloop.store.records import LabelClass, LabelSchema

router = APIRouter(prefix="/api/v1")

NIFTI = "application/gzip"
NIFTI_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {NIFTI: {"schema": {"type": "string", "format": "binary"}}}, "description": "gzip NIfTI-1"}
}
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}
LABEL_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "base_revision": {"type": "integer"},
                        "status": {"type": "string", "enum": ["draft", "final"]},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}

State = Annotated[ServerState, Depends(server_state)]
Viewer = Annotated[Principal, Depends(require("annotator"))]
Annotator = Annotated[Principal, Depends(require("annotator"))]
Reviewer = Annotated[Principal, Depends(require("reviewer"))]
Admin = Annotated[Principal, Depends(require("admin"))]
ImageId = Annotated[str, PathParam(min_length=1, max_length=256)]
ModelName = Annotated[str, PathParam(min_length=1, max_length=128)]


def finite(x: Any) -> Any:
    """JSON cannot carry inf/NaN: they become null (e.g. HD95 of a class absent on one side)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return finite(x.item())
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


# --- health, version, auth ---------------------------------------------------------------------


@router.get("/health", tags=["meta"])
def health(state: State) -> dict[str, Any]:
    """Liveness and a summary of the server's load (no auth needed)."""
    return {
        "status": "ok",
        "version": __version__,
        "auth": "open" if state.auth.open else "required",
        "jobs_running": state.runner.running_count(),
        "inference": {
            "workers": state.pool.workers,
            "queue": state.pool.queue,
            "in_flight": state.pool.in_flight,
        },
        "sessions": len(state.sessions),
        "event_clients": state.hub.client_count,
    }


@router.get("/version", tags=["meta"])
def version() -> dict[str, Any]:
    import platform

    return {"name": "segloop", "version": __version__, "api": "v1", "python": platform.python_version()}


class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


@router.post("/auth/login", tags=["auth"])
def login(body: LoginBody, state: State) -> dict[str, Any]:
    """Exchange a user name and password for a session token (``Authorization: Bearer``)."""
    if state.auth.open:
        raise ApiError(409, "auth_disabled", "this server runs without authentication (loopback only)")
    token, principal, expiry = state.auth.login(body.username, body.password)
    return {"token": token, "user": principal.to_dict(), "expires_at": expiry}


@router.get("/auth/me", tags=["auth"])
def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
    return principal.to_dict()


# --- schema --------------------------------------------------------------------------------------


class ClassBody(BaseModel):
    value: int = Field(ge=0, le=65535)
    name: str = Field(min_length=1, max_length=128)
    color: tuple[int, int, int] = (255, 0, 0)


class SchemaBody(BaseModel):
    classes: list[ClassBody] = Field(max_length=255)


@router.get("/schema", tags=["schema"])
def get_schema(state: State, _: Viewer) -> dict[str, Any]:
    return state.store.get_schema().to_dict()


@router.put("/schema", tags=["schema"])
def set_schema(body: SchemaBody, state: State, _: Admin) -> dict[str, Any]:
    """Replace the label schema (admin). Names and colours may change; a class value that saved
    label revisions contain cannot be removed (422 naming the classes)."""
    for c in body.classes:
        if not all(0 <= v <= 255 for v in c.color):
            raise ApiError(422, "invalid", f"class {c.name!r}: colour components must be 0-255")
    schema = LabelSchema(tuple(LabelClass(c.value, c.name, (c.color[0], c.color[1], c.color[2])) for c in body.classes))
    state.store.set_schema(schema)
    state.bus.publish("schema.changed", schema.to_dict())
    return state.store.get_schema().to_dict()


# --- images --------------------------------------------------------------------------------------

LabelStateQ = Literal["none", "draft", "final"]


@router.get("/images", tags=["images"])
def list_images(
    state: State,
    _: Viewer,
    label_state: LabelStateQ | None = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    modality: Annotated[
        str | None, Query(max_length=16, description="DICOM modality code (CT, MR, ...), case-insensitive")
    ] = None,
    study_date: Annotated[
        str | None,
        Query(max_length=17, description="YYYYMMDD or a range YYYYMMDD-YYYYMMDD (an open end: YYYYMMDD- or -YYYYMMDD)"),
    ] = None,
    description: Annotated[
        str | None,
        Query(max_length=64, description="text in the series description (the name when there is none); * and ? are wildcards"),
    ] = None,
) -> dict[str, Any]:
    """Images, oldest first, optionally only those whose latest label is none/draft/final and
    that match the series filters. With a DICOMweb server the filters go to its QIDO-RS search,
    within the server's ``--dicomweb-filter`` (a request cannot widen those); on the local store
    they apply to the metadata kept at import. A malformed filter → 422 naming it."""
    filters = SeriesFilter.parse(modality, study_date, description)
    items = state.store.list_images(label_state=label_state, offset=offset, limit=limit, filters=filters or None)
    out = {
        "items": [finite(r.to_dict()) for r in items],
        "total": state.store.count_images(label_state=label_state, filters=filters or None),
        "offset": offset,
        "limit": limit,
        "filters": filters.to_dict(),
    }
    if getattr(state.store, "listing_problem", None):  # DICOMweb: QIDO failed, local images only (docs/pacs.md)
        out["pacs_unreachable"] = state.store.listing_problem
    return out


def _strip(text: str, folder: Path) -> str:
    return text.replace(str(folder) + "/", "").replace(str(folder), "upload")


@router.post("/images", tags=["images"], status_code=201, openapi_extra=MULTIPART_BODY)
async def upload_images(request: Request, state: State, principal: Reviewer) -> dict[str, Any]:
    """Upload images: multipart field ``file`` (repeatable) holding a NIfTI file, DICOM files or a
    zip of a series. The body streams to disk; every file is validated (the same rules as
    ``segloop import``) before anything is stored. Bad input → 4xx naming the problem, nothing stored."""
    staging = Path(state.store.staging_dir())
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=staging))
    try:
        received = await receive_multipart(request, folder, state.settings.max_upload_bytes)
        files = received.files_of("file")
        if not files:
            raise ApiError(422, "invalid_upload", "no file part named 'file' in the upload")
        try:
            report = await run_in_threadpool(import_paths, state.store, [folder], author=principal.name)
        except IngestError as exc:
            problems = [_strip(p, folder) for p in exc.problems]
            raise ApiError(422, "invalid_upload", problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), problems=problems) from exc
        images = [finite(item.record.to_dict()) for item in report.images]
        for img in images:
            state.bus.publish("image.added", {"image_id": img["id"], "name": img["name"]})
        return {
            "images": images,
            "skipped": [{"file": _strip(str(p), folder), "reason": r} for p, r in report.skipped],
            "notes": [_strip(n, folder) for n in report.notes],
        }
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)


@router.get("/images/{image_id}", tags=["images"])
def get_image(image_id: ImageId, state: State, _: Viewer) -> dict[str, Any]:
    return finite(state.store.get_image(image_id).to_dict())


@router.get("/images/{image_id}/volume", tags=["images"], response_class=Response, responses=NIFTI_RESPONSE)
async def get_volume(image_id: ImageId, state: State, _: Viewer) -> Response:
    """The image as gzip-compressed NIfTI bytes.

    Recently fetched files are served from memory (checked against the file on each call; see
    `segloop.server.filecache`): no thread-pool hop, one send."""
    headers = {"Content-Disposition": f'attachment; filename="{image_id}.nii.gz"'}
    touch = getattr(state.store, "touch", None)  # DICOMweb store: in use, not idle (ephemeral release)
    if touch is not None:
        touch(image_id)
    hit = state.volumes.get(image_id)
    if hit is not None:
        return Response(hit.data, media_type=NIFTI, headers=headers)

    def load() -> bytes:
        path = Path(state.store.image_path(image_id))
        if path.name.lower().endswith(".nii.gz") and path.is_file():
            return state.volumes.load(image_id, path).data
        return nifti_bytes(state.store.load_image(image_id))

    return Response(await run_in_threadpool(load), media_type=NIFTI, headers=headers)


@router.get("/images/{image_id}/preview", tags=["images"], response_class=Response, responses=NIFTI_RESPONSE)
def get_preview(image_id: ImageId, state: State, _: Viewer) -> Response:
    """The image's middle slice (along its third axis) as a one-slice gzip NIfTI, at its place
    in the world: what a viewer can show at once. For a PACS series not fetched yet it is
    fetched alone (the middle instance by position, two small requests), so it comes long before
    ``/volume`` has the whole series; otherwise it is cut from the image."""
    preview = getattr(state.store, "preview", None)
    volume = preview(image_id) if preview is not None else middle_slice(state.store.load_image(image_id))
    headers = {"Content-Disposition": f'attachment; filename="{image_id}-preview.nii.gz"'}
    return Response(nifti_bytes(volume), media_type=NIFTI, headers=headers)


@router.delete("/images/{image_id}", tags=["images"])
def delete_image(image_id: ImageId, state: State, _: Admin) -> dict[str, Any]:
    state.store.delete_image(image_id)
    state.volumes.forget(image_id)
    state.sessions.close_image(image_id)
    state.bus.publish("image.deleted", {"image_id": image_id})
    return {"deleted": image_id}


# --- labels --------------------------------------------------------------------------------------


@router.get("/images/{image_id}/labels", tags=["labels"])
def list_labels(image_id: ImageId, state: State, _: Viewer) -> dict[str, Any]:
    state.store.get_image(image_id)
    return {"items": [r.to_dict() for r in state.store.list_revisions(image_id)]}


def _revision_number(text: str) -> int | None:
    if text == "latest":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ApiError(422, "invalid", f"revision must be a number or 'latest', not {text!r}") from None
    if n < 1:
        raise ApiError(422, "invalid", "revision numbers start at 1")
    return n


RevisionParam = Annotated[str, PathParam(pattern=r"^(latest|[0-9]{1,9})$", description="a revision number or 'latest'")]


@router.get("/images/{image_id}/labels/{revision}", tags=["labels"], response_class=Response, responses=NIFTI_RESPONSE)
def get_label(image_id: ImageId, revision: RevisionParam, state: State, _: Viewer) -> Response:
    """One label revision as gzip NIfTI; headers carry its number, status and author."""
    rev = state.store.get_revision(image_id, _revision_number(revision))
    headers = {
        "X-Segloop-Revision": str(rev.revision),
        "X-Segloop-Status": rev.status,
        "Content-Disposition": f'attachment; filename="{image_id}-r{rev.revision}.nii.gz"',
    }
    path = Path(rev.path)
    if path.name.lower().endswith(".nii.gz") and path.is_file():
        return FileResponse(path, media_type=NIFTI, headers=headers)
    return Response(nifti_bytes(state.store.load_label(image_id, rev.revision)), media_type=NIFTI, headers=headers)


@router.get("/images/{image_id}/labels/{revision}/info", tags=["labels"])
def get_label_info(image_id: ImageId, revision: RevisionParam, state: State, _: Viewer) -> dict[str, Any]:
    return state.store.get_revision(image_id, _revision_number(revision)).to_dict()


def _parse_base(text: str | None) -> int | None:
    if text is None or text.strip() in ("", "null", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, "invalid", f"base_revision must be an integer, not {text!r}") from None


@router.post("/images/{image_id}/labels", tags=["labels"], status_code=201, openapi_extra=LABEL_BODY)
async def save_label(image_id: ImageId, request: Request, state: State, principal: Annotator) -> dict[str, Any]:
    """Save a new label revision (multipart: ``file`` NIfTI on the image's grid, ``base_revision``
    = the revision it was edited from, ``status`` draft|final). A stale ``base_revision`` → 409
    with ``current_revision``; nothing is overwritten."""
    await run_in_threadpool(state.store.get_image, image_id)
    folder = Path(tempfile.mkdtemp(prefix="label-", dir=Path(state.store.staging_dir())))
    try:
        received = await receive_multipart(request, folder, state.settings.max_upload_bytes)
        upload, status = one_label_upload(received, "label file", principal.has("reviewer"))
        base = _parse_base(received.fields.get("base_revision"))

        def work() -> Any:
            try:
                volume = read_nifti(upload)
            except Exception as exc:
                raise ApiError(422, "invalid_image", _strip(str(exc), folder)) from exc
            return state.store.save_label(
                image_id, volume, author=principal.name, source="manual", status=status, base_revision=base
            )

        rev = await run_in_threadpool(work)
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)
    data = rev.to_dict()
    state.bus.publish("label.revision", data)
    return data


@router.post("/images/{image_id}/labels/{revision}/final", tags=["labels"])
def mark_final(image_id: ImageId, revision: Annotated[int, PathParam(ge=1, le=10**9)], state: State, principal: Reviewer) -> dict[str, Any]:
    """Mark a revision final (reviewer)."""
    rev = state.store.mark_final(image_id, revision, author=principal.name)
    data = rev.to_dict()
    state.bus.publish("label.revision", data)
    return data
