"""PACS routes under ``/api/v1``: DICOM SEG download, "send to PACS" (STOW-RS), ephemeral release.

```
GET  /pacs                                          annotator  DICOMweb configuration (url, filters, ephemeral, state)
GET  /images/{id}/labels/{rev}/dicom-seg            annotator  the revision as a DICOM SEG (application/dicom)
POST /images/{id}/labels/{rev}/send                 reviewer   STOW-RS the SEG of a *final* revision to the PACS
POST /images/{id}/release[?discard_unsent=true]     annotator  ephemeral mode: delete the local copy now
POST /images/{id}/dicom-seg                         annotator  import a DICOM SEG (multipart ``file``) as a new
                                                               label revision; says what overlapping segments lost
```

The SEG import (``status`` draft|final — final needs the reviewer role —, ``extend_schema``
true|false) answers the revision, the segments and, since a label map holds one class per
voxel, exactly what flattening overlapping segments dropped: ``overlap_voxels`` and
``overlaps`` (per kept/dropped segment pair: numbers, labels, label values, voxels). A SEG that
does not fit the image → 422 ``invalid_image``; unknown segments without ``extend_schema`` → 422.

``rev`` is a number or ``latest``. The SEG references the source instances through the headers
the datastore kept at import / fetch time. Errors: no DICOMweb server configured → 409
``no_dicomweb``; the image has no DICOM headers (not from DICOM) → 422 ``not_dicom``; a draft
revision → 409 ``not_final``; the PACS fails (`segloop.store.dicomweb_http.PacsError`): unreachable
→ 503 ``pacs_unreachable``, silent → 504 ``pacs_timeout`` (both with ``Retry-After``), an error
answer → 502 ``pacs_error`` / ``pacs_auth`` / ``pacs_refused``, naming the PACS and the UIDs; a release that would delete label revisions not sent to the PACS → 409
``unsent_labels`` (naming them). Events: ``label.sent`` (image_id, revision, sop_instance_uid,
series_instance_uid, url, by), ``image.released`` and ``image.kept`` (see
`segloop.server.app.EphemeralReleaser` for the automatic releases).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.state import ServerState, get_state, require
from segloop.store.errors import ValidationError
from segloop.store.records import LabelStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["pacs"])

State = Annotated[ServerState, Depends(get_state)]
Viewer = Annotated[Principal, Depends(require("annotator"))]
Reviewer = Annotated[Principal, Depends(require("reviewer"))]
ImageId = Annotated[str, PathParam(min_length=1, max_length=256)]
Revision = Annotated[str, PathParam(pattern=r"^(latest|[0-9]{1,9})$", description="a revision number or 'latest'")]
DICOM = "application/dicom"
SEG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM: {"schema": {"type": "string", "format": "binary"}}}, "description": "DICOM SEG"}
}


def _dicomweb(state: ServerState) -> Any:
    store = state.store
    if getattr(store, "source", None) is None or not hasattr(store, "ensure_local"):
        raise ApiError(
            409, "no_dicomweb", "no DICOMweb server is configured: start the server with --dicomweb URL"
        )
    return store


def _make_seg(state: ServerState, image_id: str, revision: str) -> tuple[Path, Any, Any]:
    """Write the SEG into a temporary folder; returns (path, dataset, revision record)."""
    from segloop.store.seg_import import export_dicom_seg, stored_headers

    rev = state.store.get_revision(image_id, None if revision == "latest" else int(revision))
    try:
        stored_headers(state.store, image_id)
    except ValidationError as exc:
        raise ApiError(422, "not_dicom", str(exc)) from exc
    folder = Path(tempfile.mkdtemp(prefix="seg-", dir=state.store.staging_dir()))
    path = folder / f"{image_id}-r{rev.revision}.seg.dcm"
    try:
        ds, _ = export_dicom_seg(state.store, image_id, rev.revision, None, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path, ds, rev


@router.get("/pacs")
def pacs_info(state: State, _: Viewer) -> dict[str, Any]:
    """Whether images come from a DICOMweb server, which one, with which filters."""
    store = state.store
    source = getattr(store, "source", None)
    return {
        "dicomweb": source is not None,
        "url": getattr(source, "url", None),
        "filters": dict(getattr(store, "filters", {}) or {}),
        "ephemeral": bool(getattr(store, "ephemeral", False)),
        # ephemeral images kept on disk because label revisions of theirs were not sent: id -> revisions
        "held": store.held() if hasattr(store, "held") else {},
        # what the last call to the PACS found: reachable (None before any call), error, code, since
        "state": source.link.state() if source is not None else None,
    }


@router.get("/images/{image_id}/labels/{revision}/dicom-seg", response_class=FileResponse, responses=SEG_RESPONSE)
async def download_seg(image_id: ImageId, revision: Revision, state: State, _: Viewer) -> FileResponse:
    """The label revision as a DICOM Segmentation object referencing the image's source instances."""
    path, ds, rev = await run_in_threadpool(_make_seg, state, image_id, revision)
    return FileResponse(
        path,
        media_type=DICOM,
        filename=path.name,
        headers={"X-Segloop-Revision": str(rev.revision), "X-Segloop-Sop-Instance-Uid": str(ds.SOPInstanceUID)},
        background=BackgroundTask(shutil.rmtree, path.parent, True),
    )


@router.post("/images/{image_id}/labels/{revision}/send")
async def send_to_pacs(image_id: ImageId, revision: Revision, state: State, principal: Reviewer) -> dict[str, Any]:
    """STOW-RS a final revision's SEG to the configured DICOMweb server (reviewer)."""
    store = _dicomweb(state)
    rev = await run_in_threadpool(store.get_revision, image_id, None if revision == "latest" else int(revision))
    if rev.status != "final":
        raise ApiError(409, "not_final", f"revision {rev.revision} of {image_id!r} is a draft; only final labels go to the PACS")

    def work() -> dict[str, Any]:
        path, ds, _ = _make_seg(state, image_id, str(rev.revision))
        try:
            store.source.store_seg(ds)  # PacsError -> 502/503/504 (server.errors)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        store.mark_sent(image_id, rev.revision)  # an ephemeral release now loses nothing of it
        return {
            "image_id": image_id,
            "revision": rev.revision,
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "study_instance_uid": str(ds.StudyInstanceUID),
            "url": store.source.url,
            "by": principal.name,
        }

    data = await run_in_threadpool(work)
    state.bus.publish("label.sent", data)
    return data


@router.post("/images/{image_id}/release")
async def release(
    image_id: ImageId,
    state: State,
    _: Viewer,
    discard_unsent: Annotated[
        bool, Query(description="also delete label revisions that were not sent to the PACS (otherwise: 409)")
    ] = False,
) -> dict[str, Any]:
    """Ephemeral mode: delete the image's local copy (voxels, headers, label revisions) now.
    A label revision not sent to the PACS is not deleted silently: 409 ``unsent_labels`` naming
    the revisions, unless ``discard_unsent=true``."""
    store = _dicomweb(state)
    if not store.ephemeral:
        raise ApiError(409, "not_ephemeral", "the server is not in ephemeral mode (--ephemeral)")
    await run_in_threadpool(store.get_image, image_id)
    result = await run_in_threadpool(lambda: store.release(image_id, discard_unsent=discard_unsent))
    if result.reason == "not_from_pacs":
        raise ApiError(409, "not_from_pacs", f"{image_id!r} was not fetched from the PACS (an upload): delete it instead")
    if result.reason == "unsent":
        revs = ", ".join(map(str, result.unsent_revisions))
        raise ApiError(
            409,
            "unsent_labels",
            f"label revision(s) {revs} of {image_id!r} were not sent to the PACS; send the final label first, "
            "or release with discard_unsent=true to delete them",
            unsent_revisions=list(result.unsent_revisions),
        )
    if result.released:
        state.sessions.close_image(image_id)  # their images are gone (no release is scheduled: none left)
    publish_release(state, result, "asked")
    return result.to_dict()


def publish_release(state: ServerState, result: Any, why: str) -> None:
    """Events and memory after `DicomWebDatastore.release` (here, on request, and by the app's releaser)."""
    data = {**result.to_dict(), "why": why}
    if result.released:
        state.volumes.forget(result.image_id)
        state.bus.publish("image.released", data)
        log.info("ephemeral: %s released from local disk (%s)", result.image_id, why)
    elif result.reason == "unsent":
        state.bus.publish("image.kept", data)
        log.info("ephemeral: %s kept on disk (%s): revision(s) %s not sent to the PACS",
                 result.image_id, why, ", ".join(map(str, result.unsent_revisions)))


Annotator = Annotated[Principal, Depends(require("annotator"))]
SEG_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "status": {"type": "string", "enum": ["draft", "final"]},
                        "extend_schema": {"type": "boolean"},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


@router.post("/images/{image_id}/dicom-seg", openapi_extra=SEG_BODY)
async def import_seg(image_id: ImageId, request: Request, state: State, principal: Annotator) -> dict[str, Any]:
    """Import a DICOM SEG as a new label revision of the image (placed by geometry)."""
    from segloop.server.uploads import one_label_upload, receive_multipart
    from segloop.store.seg_import import import_dicom_seg

    await run_in_threadpool(state.store.get_image, image_id)
    folder = Path(tempfile.mkdtemp(prefix="seg-", dir=Path(state.store.staging_dir())))
    try:
        received = await receive_multipart(request, folder, state.settings.max_upload_bytes)
        upload, status = one_label_upload(received, "DICOM SEG file", principal.has("reviewer"))
        extend = str(received.fields.get("extend_schema", "false")).lower() in ("1", "true", "yes")

        final: LabelStatus = "final" if status == "final" else "draft"

        def work() -> Any:
            return import_dicom_seg(state.store, upload, author=principal.name, status=final,
                                    image_id=image_id, extend_schema=extend)

        result = await run_in_threadpool(work)
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)
    data = result.revision.to_dict()
    state.bus.publish("label.revision", data)
    return {
        "revision": data,
        "segments": [{"number": s.number, "label": s.label, "value": result.value_of_segment.get(s.number),
                      "voxels": s.voxels} for s in result.segments],
        "schema_changed": result.schema_changed,
        "overlap_voxels": result.overlap_voxels,
        "overlaps": result.overlap_report(),
        "notes": result.notes,
    }

