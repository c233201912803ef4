"""The MONAI-Label-compatible `/session/...`: uploaded images kept for a while (MONAI Label sessions)."""

from __future__ import annotations

import shutil
from typing import Annotated, Any

from fastapi import Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.monailabel.common import (
    Compat,
    _read_single_volume,
    _receive,
    route,
)
from segloop.server.monailabel.state import CompatState
from segloop.server.routes import Annotator, State

# --- /session ---------------------------------------------------------------------------------


@route("PUT", "/session/")
async def create_session(
    request: Request, state: State, cs: Compat, principal: Annotator,
    expiry: Annotated[int, Query(ge=0, le=7 * 24 * 3600)] = 0,
    uncompress: bool = False,
) -> dict[str, Any]:
    """Keep an uploaded image (multipart ``files``: one NIfTI/NRRD file, the files of a DICOM
    series, or a zip) for ``/infer?session_id=``; it is not added to the datastore."""
    folder, received = await _receive(request, state)
    try:
        files = [p for name, p in received.files if name in ("files", "file")]
        if not files:
            raise ApiError(404, "not_found", "no image file in the request (multipart part 'files')")
        volume = await run_in_threadpool(_read_single_volume, files, folder / "x")
        first = received.original_names.get(files[0], files[0].name)
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)
    from segloop.store.local import slugify

    seconds = float(expiry) if expiry > 0 else float(state.sessions.idle_seconds)
    s = cs.add_upload(slugify(first), volume, principal.name, seconds)
    return {"session_id": s.id, "session_info": s.info()}


def _upload(cs: CompatState, session_id: str, principal: Principal) -> Any:
    s = cs.get_upload(session_id)
    if s is None:
        raise ApiError(404, "not_found", f"session ({session_id}) not found")
    if s.owner != principal.name and not principal.has("admin"):
        raise ApiError(403, "forbidden", "this session belongs to another user")
    return s


@route("GET", "/session/{session_id}")
def get_session(session_id: str, cs: Compat, principal: Annotator, image: bool = False) -> Any:
    s = _upload(cs, session_id, principal)
    if image:
        from segloop.imaging.nifti import nifti_bytes

        return Response(nifti_bytes(s.volume), media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{s.name}.nii.gz"'})
    return s.info()


@route("DELETE", "/session/{session_id}")
def remove_session(session_id: str, state: State, cs: Compat, principal: Annotator) -> dict[str, Any]:
    s = _upload(cs, session_id, principal)
    cs.remove_upload(session_id)
    with cs.lock:
        keys = [k for k in cs.implicit if k[1] == f"session:{session_id}"]
        ids = [cs.implicit.pop(k) for k in keys]
    for sid in ids:
        state.sessions.close(sid)
    return s.info()
