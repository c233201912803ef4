"""The MONAI-Label-compatible `/datastore/...`: images, labels (revisions), dataset download."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from segloop.imaging.volume import Volume
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.monailabel import convert
from segloop.server.monailabel.common import (
    Compat,
    _image_info,
    _json_body,
    _label_tags,
    _local_paths,
    _read_single_volume,
    _receive,
    _resolve_image,
    _revision_for_tag,
    _revision_info,
    route,
    router,
)
from segloop.server.monailabel.info import _datastore_stats
from segloop.server.monailabel.state import CompatState
from segloop.server.routes import Admin, Annotator, Reviewer, State, Viewer
from segloop.server.state import ServerState
from segloop.store.errors import ConflictError, NotFoundError
from segloop.store.records import ImageRecord, LabelRevision

# --- /datastore -------------------------------------------------------------------------------


@route("GET", "/datastore/")
def datastore(
    state: State, cs: Compat, _: Viewer, output: Annotated[str | None, Query(max_length=8)] = None
) -> Any:
    """``stats`` (default), ``all`` (every image with its label tags) or ``train`` (final labels)."""
    kind = (output or "stats").lower()
    if kind not in ("stats", "all", "train"):
        raise ApiError(422, "invalid", f"output must be stats, all or train, not {output!r}")
    if kind == "stats":
        return _datastore_stats(state)
    schema = state.store.get_schema()
    if kind == "train":
        out = []
        for rev in state.store.final_labels():
            item: dict[str, Any] = {"image_id": rev.image_id, "revision": rev.revision}
            if _local_paths(state):
                item.update(image=str(state.store.image_path(rev.image_id)), label=str(rev.path))
            else:
                item.update(image=f"/datastore/image?image={rev.image_id}",
                            label=f"/datastore/label?label={rev.image_id}&tag=final")
            out.append(item)
        return out
    objects: dict[str, Any] = {}
    for rec in state.store.list_images():
        tags = _label_tags(state.store.list_revisions(rec.id)) if rec.latest_revision else {}
        objects[rec.id] = {
            "image": {"ext": ".nii.gz", "info": _image_info(state, rec, cs)},
            "labels": {t: {"ext": ".nii.gz", "info": _revision_info(r, schema, cs, t)} for t, r in tags.items()},
        }
    return {"name": "segloop", "description": "segloop datastore (label revisions)", "images_dir": "",
            "labels_dir": "labels", "objects": objects}


def _same_image(a: Volume, b: Volume) -> bool:
    return a.shape == b.shape and a.channels == b.channels and bool(np.allclose(a.affine, b.affine, atol=1e-3)) \
        and bool(np.array_equal(np.asarray(a.array), np.asarray(b.array)))


async def _add_image(request: Request, state: ServerState, cs: CompatState, principal: Principal, image: str | None) -> dict[str, Any]:
    from segloop.store.ingest import IngestError, import_paths
    from segloop.store.local import slugify

    folder, received = await _receive(request, state)
    try:
        files = received.files_of("file")
        if len(files) != 1:
            raise ApiError(422, "invalid_upload", "send one file in the part named 'file'")
        params = convert.parse_params(received.fields.get("params"))
        original = received.original_names.get(files[0], files[0].name)
        lower = original.lower()
        ext = next((s for s in (".nii.gz", ".nii", ".nrrd", ".zip", ".dcm") if lower.endswith(s)), "")
        name = (image or "").strip() or (original[: -len(ext)] if ext else original)
        target = slugify(name)
        src = folder / "in"
        src.mkdir()
        files[0].rename(src / f"{target}{ext}")
        try:
            existing = await run_in_threadpool(_resolve_image, state, name)
        except NotFoundError:
            existing = None
        if existing is not None:
            new = await run_in_threadpool(_read_single_volume, [src], folder / "x")
            old = await run_in_threadpool(state.store.load_image, existing.id)
            if not await run_in_threadpool(_same_image, new, old):
                raise ApiError(409, "image_exists",
                               f"image {existing.id!r} already exists with different content; segloop never "
                               "overwrites an image (upload it under another name)", image=existing.id)
            rec = existing
        else:
            try:
                report = await run_in_threadpool(import_paths, state.store, [src], author=principal.name)
            except IngestError as exc:
                raise ApiError(422, "invalid_upload", str(exc).replace(str(src) + "/", ""),
                               problems=[p.replace(str(src) + "/", "") for p in exc.problems]) from exc
            if not report.images:
                raise ApiError(422, "invalid_upload", "no image found in the upload")
            rec = report.images[0].record
            state.bus.publish("image.added", {"image_id": rec.id, "name": rec.name})
        extra = {k: v for k, v in params.items() if k != "client_id"}
        if extra:
            cs.update_info(f"image:{rec.id}", extra)
        return {"image": rec.id}
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)


@route("PUT", "/datastore/")
async def add_image_deprecated(
    request: Request, state: State, cs: Compat, principal: Reviewer,
    image: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Deprecated alias of ``PUT /datastore/image`` (MONAI Label's clients still call it)."""
    return await _add_image(request, state, cs, principal, image)


@route("PUT", "/datastore/image")
async def add_image(
    request: Request, state: State, cs: Compat, principal: Reviewer,
    image: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Upload an image (multipart ``file``; NIfTI, NRRD, or a zip of a DICOM series) under the id
    ``image``. The same content uploaded again under that id answers the existing image; other
    content under an existing id → 409 (images are never overwritten)."""
    return await _add_image(request, state, cs, principal, image)


def _delete(state: ServerState, ref: str) -> dict[str, Any]:
    rec = _resolve_image(state, ref)
    state.store.delete_image(rec.id)
    state.sessions.close_image(rec.id)
    state.bus.publish("image.deleted", {"image_id": rec.id})
    return {}


@route("DELETE", "/datastore/")
def delete_image_deprecated(state: State, _: Admin, id: Annotated[str, Query(max_length=512)]) -> dict[str, Any]:
    return _delete(state, id)


@route("DELETE", "/datastore/image")
def delete_image(
    state: State, _: Admin,
    id: Annotated[str | None, Query(max_length=512)] = None,
    image: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Delete an image and its label revisions (admin)."""
    return _delete(state, id or image or "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@route("GET", "/datastore/image")
def download_image(state: State, _: Viewer, image: Annotated[str, Query(max_length=512)]) -> Response:
    """The image as stored (gzip NIfTI, its own voxel order and affine)."""
    from segloop.imaging.nifti import nifti_bytes

    rec = _resolve_image(state, image)
    path = Path(state.store.image_path(rec.id))
    if path.name.lower().endswith(".nii.gz") and path.is_file():
        return FileResponse(path, media_type="application/gzip", filename=f"{rec.id}.nii.gz")
    return Response(nifti_bytes(state.store.load_image(rec.id)), media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{rec.id}.nii.gz"'})


@router.head("/datastore/image")
def check_image(
    state: State, _: Viewer, image: Annotated[str, Query(max_length=512)],
    check_sum: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """200 when the image exists (and, with ``check_sum`` ``[SHA256:]<hex>``, has that digest)."""
    rec = _resolve_image(state, image)
    if check_sum:
        algo, _sep, digest = check_sum.rpartition(":")
        if (algo or "SHA256").upper() != "SHA256":
            raise ApiError(422, "invalid", "only SHA256 check sums are supported")
        if digest.lower() != _sha256(Path(state.store.image_path(rec.id))):
            raise ApiError(404, "not_found", "image check sum differs")
    return Response(status_code=200)


@route("GET", "/datastore/image/info")
def get_image_info(state: State, cs: Compat, _: Viewer, image: Annotated[str, Query(max_length=512)]) -> dict[str, Any]:
    return _image_info(state, _resolve_image(state, image), cs)


async def _form_json(request: Request, state: ServerState, field: str) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "")
    if "multipart/form-data" in ctype:
        folder, received = await _receive(request, state)
        await run_in_threadpool(shutil.rmtree, folder, True)
        text = received.fields.get(field) or received.fields.get("params")
    elif "application/x-www-form-urlencoded" in ctype:
        form = await request.form()
        value = form.get(field) or form.get("params")
        text = value if isinstance(value, str) else None
    else:
        return await _json_body(request)
    try:
        return convert.parse_params(text)
    except convert.ParamsError as exc:
        raise ApiError(422, "invalid", f"{field}: {exc}") from exc


@route("PUT", "/datastore/image/info")
async def put_image_info(
    request: Request, state: State, cs: Compat, principal: Annotator, image: Annotated[str, Query(max_length=512)]
) -> dict[str, Any]:
    """Attach client info (form field ``info``, JSON) to an image; segloop's own fields win on read."""
    rec = await run_in_threadpool(_resolve_image, state, image)
    values = await _form_json(request, state, "info")
    values["user"] = principal.name
    cs.update_info(f"image:{rec.id}", values)
    return _image_info(state, rec, cs)


def _save(state: ServerState, rec: ImageRecord, label: Volume | np.ndarray, params: dict[str, Any],
          principal: Principal, status: str) -> LabelRevision:
    schema = state.store.get_schema()
    arr = np.asarray(label.array if isinstance(label, Volume) else label)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if isinstance(label, Volume):
        if label.shape != rec.shape:
            raise ApiError(422, "geometry_mismatch", f"label shape {label.shape} does not match image {rec.id!r} "
                           f"shape {tuple(rec.shape)}")
        if not np.allclose(label.affine, np.array(rec.affine), atol=1e-2):
            raise ApiError(422, "geometry_mismatch",
                           f"label affine does not match image {rec.id!r} (label: {np.round(label.affine, 3).tolist()}, "
                           f"image: {np.round(np.array(rec.affine), 3).tolist()})")
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.rint(arr)
    try:
        arr = convert.remap_label_info(arr, params.get("label_info"), schema)
    except convert.ParamsError as exc:
        raise ApiError(422, "invalid_params", str(exc)) from exc
    arr = arr.astype(np.uint8 if arr.size == 0 or arr.max() <= 255 else np.uint16)
    for _attempt in range(3):
        base = state.store.get_image(rec.id).latest_revision
        try:
            return state.store.save_label(rec.id, arr, author=principal.name, source="manual",
                                          status=status, base_revision=base)
        except ConflictError:
            continue  # someone saved in between: a MONAI Label save goes on top of the latest
    raise ApiError(409, "conflict", f"image {rec.id!r} kept changing while saving; try again")


@route("PUT", "/datastore/label")
async def save_label(
    request: Request, state: State, cs: Compat, principal: Annotator,
    image: Annotated[str, Query(max_length=512)],
    tag: Annotated[str, Query(max_length=64)] = "final",
) -> dict[str, Any]:
    """Save a label (multipart ``label``: NIfTI, NRRD / .seg.nrrd, or OHIF's raw ``.bin``) as a
    new segloop revision on top of the latest. Tag ``final`` (MONAI Label's default) saves it
    final when the caller is a reviewer; an annotator's save stays a draft (the answer says so)."""
    rec = await run_in_threadpool(_resolve_image, state, image)
    folder, received = await _receive(request, state)
    try:
        files = received.files_of("label") or received.files_of("file")
        if len(files) != 1:
            raise ApiError(422, "invalid_upload", "send one label file in the part named 'label'")
        params = convert.parse_params(received.fields.get("params"))
        original = received.original_names.get(files[0], files[0].name)
        t = (tag or "final").strip().lower()
        status = "final" if t == "final" and principal.has("reviewer") else "draft"

        def work() -> LabelRevision:
            try:
                label = convert.read_label_file(files[0], original, rec.shape)
            except convert.ParamsError as exc:
                raise ApiError(422, "invalid_upload", str(exc)) from exc
            except Exception as exc:
                raise ApiError(422, "invalid_image", str(exc).replace(str(folder) + "/", "")) from exc
            return _save(state, rec, label, params, principal, status)

        rev = await run_in_threadpool(work)
    except convert.ParamsError as exc:
        raise ApiError(422, "invalid_params", str(exc)) from exc
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)
    data = rev.to_dict()
    state.bus.publish("label.revision", data)
    extra = {k: v for k, v in params.items() if k not in ("client_id",)}
    if extra:
        cs.update_info(f"label:{rec.id}:{t}", extra)
    out: dict[str, Any] = {"image": rec.id, "label": rec.id, "tag": t, "revision": rev.revision, "status": rev.status}
    if t == "final" and rev.status != "final":
        out["note"] = "saved as a draft: marking a label final needs the reviewer role"
    return out


def _label_file(state: ServerState, ref: str, tag: str | None) -> tuple[ImageRecord, LabelRevision]:
    rec = _resolve_image(state, ref)
    return rec, _revision_for_tag(state, rec.id, tag)


@route("GET", "/datastore/label")
def download_label(
    state: State, _: Viewer,
    label: Annotated[str | None, Query(max_length=512)] = None,
    image: Annotated[str | None, Query(max_length=512)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = "final",
) -> Response:
    """A label revision as gzip NIfTI. ``label`` is the image id (MONAI Label's label ids are
    image ids); ``tag``: final (default), latest, original, or a revision number."""
    from segloop.imaging.nifti import nifti_bytes

    rec, rev = _label_file(state, label or image or "", tag)
    name = f"{rec.id}-r{rev.revision}.nii.gz"
    headers = {"X-Segloop-Revision": str(rev.revision), "X-Segloop-Status": rev.status}
    path = Path(rev.path)
    if path.name.lower().endswith(".nii.gz") and path.is_file():
        return FileResponse(path, media_type="application/gzip", filename=name, headers=headers)
    data = nifti_bytes(state.store.load_label(rec.id, rev.revision))
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(data, media_type="application/gzip", headers=headers)


@router.head("/datastore/label")
def check_label(
    state: State, _: Viewer,
    label: Annotated[str | None, Query(max_length=512)] = None,
    image: Annotated[str | None, Query(max_length=512)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = "final",
) -> Response:
    _label_file(state, label or image or "", tag)
    return Response(status_code=200)


@route("GET", "/datastore/label/info")
def get_label_info(
    state: State, cs: Compat, _: Viewer,
    label: Annotated[str, Query(max_length=512)],
    tag: Annotated[str | None, Query(max_length=64)] = "final",
) -> dict[str, Any]:
    rec, rev = _label_file(state, label, tag)
    return _revision_info(rev, state.store.get_schema(), cs, (tag or "final").lower())


@route("PUT", "/datastore/label/info")
async def put_label_info(
    request: Request, state: State, cs: Compat, principal: Annotator,
    label: Annotated[str, Query(max_length=512)],
    tag: Annotated[str | None, Query(max_length=64)] = "final",
) -> dict[str, Any]:
    rec, rev = await run_in_threadpool(_label_file, state, label, tag)
    values = await _form_json(request, state, "info")
    values["user"] = principal.name
    t = (tag or "final").lower()
    cs.update_info(f"label:{rec.id}:{t}", values)
    return _revision_info(rev, state.store.get_schema(), cs, t)


def _dataset_zip(state: ServerState, limit: int | None) -> Path:
    """Final labels and their images as a zip in the Medical Segmentation Decathlon layout
    (``imagesTr/``, ``labelsTr/``, ``dataset.json``) — what ``segloop import`` reads back."""
    schema = state.store.get_schema()
    finals = state.store.final_labels()
    if limit is not None:
        finals = finals[: max(0, limit)]
    fd, tmp = tempfile.mkstemp(prefix="dataset-", suffix=".zip", dir=Path(state.store.staging_dir()))
    import os

    os.close(fd)
    path = Path(tmp)
    training = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for rev in finals:
            img = Path(state.store.image_path(rev.image_id))
            zf.write(img, f"imagesTr/{rev.image_id}.nii.gz")
            zf.write(rev.path, f"labelsTr/{rev.image_id}.nii.gz")
            training.append({"image": f"./imagesTr/{rev.image_id}.nii.gz", "label": f"./labelsTr/{rev.image_id}.nii.gz",
                             "revision": rev.revision})
        meta = {"name": "segloop", "labels": {str(c.value): c.name for c in schema.classes},
                "numTraining": len(training), "training": training}
        zf.writestr("dataset.json", json.dumps(meta, indent=1))
    return path


@route("GET", "/datastore/dataset")
async def download_dataset(
    state: State, _: Annotator, limit_cases: Annotated[int | None, Query(ge=0, le=10**6)] = None
) -> Response:
    path = await run_in_threadpool(_dataset_zip, state, limit_cases)
    return FileResponse(path, media_type="application/zip", filename="dataset.zip",
                        background=BackgroundTask(path.unlink, missing_ok=True))
