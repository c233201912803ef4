"""Shared pieces of the MONAI-Label-compatible routes: the router, the route decorator that also
registers the trailing-slash variant, the compat state dependency and helpers used by several concepts."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request

from segloop.imaging.volume import Volume
from segloop.jobs.records import Job
from segloop.server.errors import ApiError
from segloop.server.monailabel.state import CompatState, compat_state
from segloop.server.routes import State, finite
from segloop.server.state import ServerState
from segloop.server.uploads import Received, receive_multipart
from segloop.store.errors import NotFoundError
from segloop.store.records import ImageRecord, LabelRevision, LabelSchema

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
F = TypeVar("F", bound=Callable[..., Any])

INTERACTIVE_SUFFIX = "_interactive"
STRATEGY_ALIASES = {"first": "sequential", "epistemic": "mc-dropout", "last": "sequential"}
TAGS = ("final", "latest", "original")
STRATEGY_TEXT = {
    "random": "a random image without a final label (a new draw per request)",
    "sequential": "the first imported image without a final label",
    "entropy": "highest mean predictive entropy of the model's automatic prediction",
    "mc-dropout": "highest mutual information over MC-dropout passes (needs dropout in the network)",
    "tta": "highest disagreement over test-time-augmented passes",
    "soft-dice": "highest expected Dice loss of the model's own prediction",
    "typiclust": "the most typical image of the largest cluster of the model's features no label covers yet",
}


def route(method: str, path: str) -> Callable[[F], F]:
    """Register ``path`` with and without its trailing slash: MONAI Label's clients call
    ``/info/`` and ``/train/``, others ``/info``; the web app's catch-all must answer neither."""

    def deco(fn: F) -> F:
        paths = [path] if path == "/" or not path.endswith("/") else [path, path.rstrip("/")]
        for p in paths:
            router.add_api_route(p, fn, methods=[method])
        return fn

    return deco


def _compat(request: Request, state: State) -> CompatState:
    return compat_state(request.app.state, Path(state.settings.data))


Compat = Annotated[CompatState, Depends(_compat)]


# --- helpers ----------------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError(422, "invalid", "the request body is not valid JSON") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(422, "invalid", "the request body must be a JSON object")
    return value


def _resolve_image(state: ServerState, ref: str) -> ImageRecord:
    """An image by id, by name, by the id its name would get, or by the SeriesInstanceUID of
    an imported DICOM series (what OHIF sends)."""
    from segloop.store.local import slugify

    ref = (ref or "").strip()
    if not ref:
        raise ApiError(422, "invalid", "no image given (query parameter 'image')")
    store = state.store
    try:
        return store.get_image(ref)
    except NotFoundError:
        pass
    slug = slugify(ref)
    if slug != ref:
        try:
            return store.get_image(slug)
        except NotFoundError:
            pass
    for rec in store.list_images():
        if rec.name == ref or rec.source == f"dicom:{ref}" or rec.metadata.get("series_uid") == ref:
            return rec
    raise NotFoundError(f"image {ref!r} not found")


def _local_paths(state: ServerState) -> bool:
    """Absolute server paths are shown only to a client on the same machine (open loopback)."""
    return bool(state.auth.open)


def _image_info(state: ServerState, rec: ImageRecord, cs: CompatState | None = None) -> dict[str, Any]:
    info: dict[str, Any] = dict(cs.get_info(f"image:{rec.id}")) if cs is not None else {}
    info.update(
        {
            "id": rec.id,
            "name": f"{rec.id}.nii.gz",
            "ts": int(rec.created_at.timestamp()),
            "shape": list(rec.shape),
            "spacing": list(rec.spacing),
            "modality": rec.modality,
            "label_state": rec.label_state,
            "latest_revision": rec.latest_revision,
            "author": rec.latest_author,
        }
    )
    if rec.metadata.get("patient_id"):
        info["PatientID"] = rec.metadata.get("patient_id")
    if rec.metadata.get("series_uid"):
        info["SeriesInstanceUID"] = rec.metadata.get("series_uid")
    if _local_paths(state):
        info["path"] = str(state.store.image_path(rec.id))
    return finite(info)


def _label_names(schema: LabelSchema) -> dict[str, int]:
    return {c.name: c.value for c in schema.foreground}


def _revision_for_tag(state: ServerState, image_id: str, tag: str | None) -> LabelRevision:
    """``final``: latest final revision; ``latest`` (or empty): latest; ``original``: revision 1;
    ``<N>`` / ``r<N>``: revision N."""
    t = (tag or "latest").strip().lower()
    revisions = state.store.list_revisions(image_id)
    if t in ("latest", ""):
        hit = revisions[-1] if revisions else None
    elif t == "final":
        finals = [r for r in revisions if r.status == "final"]
        hit = finals[-1] if finals else None
    elif t == "original":
        hit = revisions[0] if revisions else None
    elif t.lstrip("r").isdigit():
        n = int(t.lstrip("r"))
        hit = next((r for r in revisions if r.revision == n), None)
    else:
        raise ApiError(404, "not_found", f"unknown label tag {tag!r} (tags: {', '.join(TAGS)}, or a revision number)")
    if hit is None:
        raise ApiError(404, "not_found", f"image {image_id!r} has no label for tag {t!r}")
    return hit


def _label_tags(revisions: list[LabelRevision]) -> dict[str, LabelRevision]:
    out: dict[str, LabelRevision] = {}
    if revisions:
        out["original"] = revisions[0]
        out["latest"] = revisions[-1]
        finals = [r for r in revisions if r.status == "final"]
        if finals:
            out["final"] = finals[-1]
    return out


def _revision_info(rev: LabelRevision, schema: LabelSchema, cs: CompatState | None, tag: str) -> dict[str, Any]:
    info: dict[str, Any] = dict(cs.get_info(f"label:{rev.image_id}:{tag}")) if cs is not None else {}
    info.update(
        {
            "revision": rev.revision,
            "status": rev.status,
            "author": rev.author,
            "source": rev.source,
            "ts": int(rev.created_at.timestamp()),
            "params": {"label_names": _label_names(schema)},
        }
    )
    return info


def _job_task(job: Job) -> dict[str, Any]:
    """A segloop job in the shape of MONAI Label's task records."""
    status = {"queued": "RUNNING", "running": "RUNNING", "done": "DONE", "failed": "ERROR",
              "interrupted": "ERROR", "cancelled": "STOPPED"}.get(job.state, job.state.upper())
    return {
        "id": job.id,
        "name": job.kind,
        "request": job.params,
        "status": status,
        "start_ts": job.started_at.isoformat() if job.started_at else job.created_at.isoformat(),
        "end_ts": job.finished_at.isoformat() if job.finished_at else None,
        "result": job.result,
        "details": [job.message] + ([job.error] if job.error else []),
        "segloop": {"state": job.state, "progress": job.progress, "detail": job.detail},
    }


def _jobs(state: ServerState, kind: str, active: bool) -> list[Job]:
    if active:
        # queued before running: a job moves queued -> running, so reading in that order cannot
        # miss one that starts between the two reads (the other order did, and the MONAI Label
        # client's check_if_running then said "not running" for a job that had just started)
        queued = list(state.jobs.list_jobs(state="queued", kind=kind, limit=100))
        running = list(state.jobs.list_jobs(state="running", kind=kind, limit=100))
        seen = {j.id for j in running}
        return running + [j for j in queued if j.id not in seen]
    return list(state.jobs.list_jobs(kind=kind, limit=100))


def _current_models(state: ServerState) -> list[Any]:
    return [m for m in state.store.list_models() if m.current_version is not None]


def _resolve_model(state: ServerState, name: str) -> tuple[str, bool]:
    """``(segloop model, interactive alias?)``: ``<model>`` and ``<model>_interactive`` both
    name segloop model ``<model>``; an exact model name wins."""
    try:
        state.store.get_model(name)
        return name, False
    except NotFoundError:
        if name.endswith(INTERACTIVE_SUFFIX) and len(name) > len(INTERACTIVE_SUFFIX):
            base = name[: -len(INTERACTIVE_SUFFIX)]
            state.store.get_model(base)  # NotFoundError names the base
            return base, True
        raise


async def _receive(request: Request, state: ServerState) -> tuple[Path, Received]:
    folder = Path(tempfile.mkdtemp(prefix="monailabel-", dir=Path(state.store.staging_dir())))
    try:
        received = await receive_multipart(request, folder, state.settings.max_upload_bytes)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, received


def _read_single_volume(paths: list[Path], workdir: Path) -> Volume:
    """One image from uploaded files (a NIfTI/NRRD file, the files of a DICOM series, a zip)."""
    from segloop.imaging.discover import discover
    from segloop.imaging.errors import ImagingError

    found = discover(paths, workdir)
    if found.errors:
        raise ApiError(422, "invalid_image", "; ".join(str(e).replace(str(workdir) + "/", "") for e in found.errors[:3]))
    if len(found.sources) != 1:
        raise ApiError(422, "invalid_image", f"expected one image in the upload, found {len(found.sources)}")
    try:
        return found.sources[0].read()
    except ImagingError as exc:
        raise ApiError(422, "invalid_image", str(exc).replace(str(workdir) + "/", "")) from exc
