"""The MONAI-Label-compatible routes (see the package docstring for the contract and decisions)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.background import BackgroundTask

from segloop import __version__
from segloop.imaging.volume import Volume
from segloop.jobs.records import Job, JobConflict
from segloop.ml.clicks import Click
from segloop.server.auth import Principal
from segloop.server.errors import ApiError
from segloop.server.monailabel import convert
from segloop.server.monailabel.state import MAX_IMPLICIT_SESSIONS, CompatState, compat_state
from segloop.server.routes import Admin, Annotator, Reviewer, State, Viewer, finite
from segloop.server.state import ServerState
from segloop.server.uploads import Received, receive_multipart
from segloop.server.workers import Busy
from segloop.store.errors import ConflictError, NotFoundError
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
        return list(state.jobs.list_jobs(state="running", kind=kind, limit=100)) + list(
            state.jobs.list_jobs(state="queued", kind=kind, limit=100)
        )
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


# --- /info ------------------------------------------------------------------------------------


def _train_stats(state: ServerState, record: Any) -> dict[str, Any]:
    best = None
    if record.current_version is not None:
        metrics = record.version().metrics or {}
        best = metrics.get("val_mean_dice")
    stats: dict[str, Any] = {"best_metric": best if best is not None else 0.0,
                             "version": record.current_version}
    running = [j for j in _jobs(state, "train", True) if j.params.get("model") == record.name]
    if running:
        d = running[0].detail or {}
        stats.update({"epoch": d.get("epoch") or 1, "total_epochs": d.get("epochs") or 1,
                      "status": "RUNNING", "job": running[0].id})
    else:
        done = [j for j in _jobs(state, "train", False) if j.params.get("model") == record.name]
        if done:
            j = done[0]
            epochs = (j.params.get("config") or {}).get("epochs") or 1
            start = j.started_at or j.created_at
            end = j.finished_at or start
            stats.update({"epoch": epochs, "total_epochs": epochs, "status": _job_task(j)["status"],
                          "total_time": round((end - start).total_seconds(), 1), "job": j.id})
    return finite(stats)


def _datastore_stats(state: ServerState) -> dict[str, Any]:
    total = state.store.count_images()
    final = state.store.count_images(label_state="final")
    draft = state.store.count_images(label_state="draft")
    return {"total": total, "completed": final,
            "label_tags": {"final": final, "latest": final + draft, "original": final + draft}}


@route("GET", "/info/")
def info(state: State, _: Viewer) -> dict[str, Any]:
    """App info: labels (the label schema), models (two entries per trained segloop model),
    trainers, strategies, scoring methods, train stats and datastore stats."""
    from segloop.activelearning.strategies import STRATEGIES

    schema = state.store.get_schema()
    labels = _label_names(schema)
    models: dict[str, Any] = {}
    trainers: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for m in state.store.list_models():
        trainers[m.name] = {"description": f"segloop training of {m.name!r} (a new version; the current one stays "
                            "usable until it finishes)", "config": {"epochs": 50, "batch_size": 2, "val_split": 0.2}}
        stats[m.name] = _train_stats(state, m)
        if m.current_version is None:
            continue
        common = {"labels": labels, "dimension": 3, "config": {},
                  "segloop": {"model": m.name, "version": m.current_version}}
        models[m.name] = {**common, "type": "segmentation",
                          "description": f"segloop model {m.name!r} v{m.current_version}: automatic segmentation; "
                          "also honours foreground/background clicks"}
        models[m.name + INTERACTIVE_SUFFIX] = {
            **common, "type": "deepgrow",
            "description": f"segloop model {m.name!r} v{m.current_version}, click-following: foreground/background "
            "points for one label; returns that label as a binary mask"}
    strategies: dict[str, dict[str, Any]] = {
        name: {"description": STRATEGY_TEXT.get(name, f"segloop strategy {name}"), "model_based": cls.needs_model}
        for name, cls in STRATEGIES.items()}
    scoring = {name: {"description": f"cache {name} scores of the unlabelled pool (background job)"}
               for name, cls in STRATEGIES.items() if cls.needs_model}
    return {
        "name": "segloop",
        "description": "segloop (MONAI-Label-compatible surface): label revisions, shared model, active learning",
        "version": __version__,
        "labels": labels,
        "models": models,
        "trainers": trainers,
        "strategies": strategies,
        "scoring": scoring,
        "train_stats": stats,
        "datastore": _datastore_stats(state),
    }


# --- /infer -----------------------------------------------------------------------------------


def _implicit_prediction(
    state: ServerState, cs: CompatState, owner: str, key: str | None, predictor: Any,
    load: Callable[[], Volume], clicks: list[Click], initial: Volume | None, encode: bool = False,
) -> tuple[Any, bytes | None]:
    """The prediction for ``clicks`` (the request's complete click set), reusing the implicit
    session of (owner, key, model version) when its clicks are a subset of these (the image is
    then not even read: the session holds it, pre-processed).

    With ``encode``, also the mask as gzip NIfTI (uint8) from the implicit session's incremental
    encoder — only the blocks this step changed are compressed again, as for native sessions —
    or None when the prediction has no implicit session (the caller encodes it whole)."""
    if key is None or initial is not None:
        session = predictor.session(load(), initial)
        return session.add_clicks(clicks), None
    ck = (owner, key, predictor.model, int(predictor.version))
    with cs.lock:
        sid = cs.implicit.get(ck)
    entry = state.sessions.get(sid) if sid else None
    if entry is not None and not entry.closed:
        with entry.lock:
            have = set(entry.session.clicks)
            if have <= set(clicks):
                new = list(dict.fromkeys(c for c in clicks if c not in have))
                pred = entry.session.add_clicks(new) if new else entry.session.prediction
                return pred, (bytes(entry.encode_prediction(pred)) if encode else None)
        state.sessions.close(entry.id)
    session = predictor.session(load())
    pred = session.add_clicks(list(dict.fromkeys(clicks)))
    for _ in range(MAX_IMPLICIT_SESSIONS + 1):
        try:
            new_entry = state.sessions.add(key, predictor.model, predictor.version, owner, session)
            break
        except Busy:
            with cs.lock:
                oldest = next(iter(cs.implicit.items()), None)
                if oldest is None:
                    return pred, None  # the manager is full of native sessions: answer without caching
                cs.implicit.pop(oldest[0], None)
            state.sessions.close(oldest[1])
    else:
        return pred, None
    data = None
    if encode:
        with new_entry.lock:  # the first, whole encoding: the next clicks re-compress only what they change
            data = bytes(new_entry.encode_prediction(pred))
    with cs.lock:
        cs.implicit[ck] = new_entry.id
        cs.implicit.move_to_end(ck)
        evict = []
        while len(cs.implicit) > MAX_IMPLICIT_SESSIONS:
            evict.append(cs.implicit.popitem(last=False)[1])
    for old in evict:
        state.sessions.close(old)
    return pred, data


@route("POST", "/infer/{model}")
async def infer(
    model: str,
    request: Request,
    state: State,
    cs: Compat,
    principal: Annotator,
    image: Annotated[str, Query(max_length=512)] = "",
    session_id: Annotated[str, Query(max_length=64)] = "",
    output: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """Segment ``image`` (or the uploaded ``file``, or the image of ``session_id``) with a segloop
    model; clicks in ``params`` make it interactive. Default answer: multipart (``params`` JSON +
    ``image`` file); ``output=image``: the file; ``output=json``: the params."""
    out_kind = (output or "all").lower()
    if out_kind not in ("all", "image", "json"):
        raise ApiError(422, "invalid", f"output {output!r} is not supported (all, image, json); DICOM SEG: "
                       "use `segloop export --format dicom-seg`")
    name, interactive = _resolve_model(state, model)
    t0 = time.perf_counter()
    ctype = request.headers.get("content-type", "")
    folder: Path | None = None
    params: dict[str, Any] = {}
    file_path: Path | None = None
    label_file: tuple[Path, str] | None = None
    if "multipart/form-data" in ctype:
        folder, received = await _receive(request, state)
        params = convert.parse_params(received.fields.get("params"))
        files = received.files_of("file")
        file_path = files[0] if files else None
        labels = received.files_of("label")
        if labels:
            label_file = (labels[0], received.original_names.get(labels[0], labels[0].name))
    elif "json" in ctype:
        params = await _json_body(request)
    try:
        fmt = convert.result_format(params)
        key: str | None
        upload: Volume | None = None
        rec: ImageRecord | None = None
        stem = "label"
        if session_id:
            s = cs.get_upload(session_id)
            if s is None:
                raise ApiError(404, "not_found", f"session {session_id!r} does not exist (expired or removed)")
            upload, key, stem = s.volume, f"session:{session_id}", s.name
        elif file_path is not None:
            assert folder is not None
            upload = await run_in_threadpool(_read_single_volume, [file_path], folder / "x")
            key = None
        elif image:
            rec = await run_in_threadpool(_resolve_image, state, image)
            key, stem = rec.id, rec.id
        else:
            raise ApiError(422, "invalid", "give an image id (?image=), a session (?session_id=) or a file")

        def work() -> tuple[bytes, dict[str, Any]]:
            t1 = time.perf_counter()
            schema = state.store.get_schema()
            loaded: list[Volume] = [upload] if upload is not None else []

            def load() -> Volume:
                if not loaded:
                    loaded.append(state.store.load_image(rec.id))  # type: ignore[union-attr]
                return loaded[0]

            shape = upload.shape if upload is not None else tuple(rec.shape)  # type: ignore[union-attr]
            req = convert.parse_clicks(params, schema, shape)
            initial: Volume | None = None
            if label_file is not None:
                lab = convert.read_label_file(label_file[0], label_file[1], shape)
                arr = np.asarray(lab.array if isinstance(lab, Volume) else lab)
                if arr.shape != tuple(shape):
                    raise convert.ParamsError(f"label shape {arr.shape} does not match the image shape {tuple(shape)}")
                initial = load().with_array(arr.astype(np.uint8))
            predictor = state.predictors.get(name)
            t2 = time.perf_counter()
            # the whole label map as compressed uint8 NIfTI: the implicit session's incremental
            # encoder can write it (a 256x256x128 mask re-compressed whole costs more than the click)
            whole_nifti = fmt == (".nii.gz", "uint8", True) and not (interactive and req.label is not None)
            encoded: bytes | None = None
            try:
                if req.clicks or initial is not None:
                    pred, encoded = _implicit_prediction(
                        state, cs, principal.name, key, predictor, load, req.clicks, initial, encode=whole_nifti
                    )
                else:
                    pred = predictor.predict(load())
            except ValueError as exc:  # a class the model does not know, a channel mismatch...
                raise convert.ParamsError(str(exc)) from exc
            t3 = time.perf_counter()
            label = pred.label
            names = {c.name: c.value for c in schema.foreground if c.value in predictor.class_values}
            if interactive and req.label is not None:
                label = label.with_array((np.asarray(label.array) == req.label).astype(np.uint8))
                names = {schema.by_value(req.label).name: 1}
            data = encoded if encoded is not None else convert.encode_label(label, fmt[0], fmt[1], schema, compress=fmt[2])
            t4 = time.perf_counter()
            meta = {
                "label_names": names,
                "latencies": {"pre": round(t2 - t1, 4), "infer": round(t3 - t2, 4), "invert": 0.0, "post": 0.0,
                              "write": round(t4 - t3, 4), "total": round(t4 - t0, 4), "transform": None},
                "segloop": {"model": pred.model, "version": pred.version, "clicks": len(req.clicks),
                            "image": rec.id if rec is not None else None, "session_id": session_id or None,
                            "label_values": "schema class values (the values /info/ lists)"},
            }
            return data, meta

        try:
            data, meta = await state.pool.run(work)
        except convert.ParamsError as exc:
            raise ApiError(422, "invalid_params", str(exc)) from exc
    except convert.ParamsError as exc:
        raise ApiError(422, "invalid_params", str(exc)) from exc
    finally:
        if folder is not None:
            await run_in_threadpool(shutil.rmtree, folder, True)
    headers = {"X-Segloop-Model": str(meta["segloop"]["model"]), "X-Segloop-Version": str(meta["segloop"]["version"])}
    if out_kind == "json":
        return JSONResponse(meta, headers=headers)
    filename = convert.result_filename(stem, fmt[0])
    media = convert.MEDIA_TYPES[fmt[0]]
    if out_kind == "image":
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(data, media_type=media, headers=headers)
    body, content_type = convert.multipart(meta, filename, data, media)
    return Response(body, media_type=content_type, headers=headers)


# --- /activelearning --------------------------------------------------------------------------


def _strategy(name: str, params: dict[str, Any]) -> Any:
    from segloop.activelearning import get_strategy
    from segloop.activelearning.strategies import STRATEGIES

    key = STRATEGY_ALIASES.get(name.strip().lower(), name.strip().lower())
    cls = STRATEGIES.get(key)
    if cls is None:
        raise ApiError(404, "unknown_strategy", f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    sp = params.get("strategy_params")
    if not isinstance(sp, dict):
        sp = {k: v for k, v in params.items() if k in cls.defaults}
    if key == "random" and "seed" not in sp:
        sp = {**sp, "seed": secrets.randbelow(2**31)}  # a new draw per request, as MONAI Label's random
    try:
        return get_strategy(key, **sp)
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc


def _rank_random(state: ServerState, pool: list[str]) -> Any:
    from segloop.activelearning.ranking import rank_pool

    return rank_pool(state.store, _strategy("random", {}), pool=pool, limit=1, cache=False)


def _score_job(state: ServerState, model: str, version: int, strat: Any, owner: str) -> Job:
    """The score job of (model, version, strategy, params), started or joined — the same key and
    parameters ``GET /api/v1/next`` uses, so the two never score a pool twice at once."""
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    resource = score_resource(model, version, strat.name, strat.params)
    latest = scoring.latest_job(state.jobs, resource)
    if latest is not None and latest.active:
        return latest
    job, _started = scoring.start_or_join(
        state.runner, scoring.job_params(model, version, strat, 0.0, state.settings.device), owner, resource)
    return job


def _model_ranking(state: ServerState, strat: Any, model: str, pool: list[Any], principal: Principal,
                   meta: dict[str, Any]) -> Any:
    """`GET /api/v1/next`'s rule (`segloop.server.scoring`) for one model-based pick, run in a
    worker thread: a ranking from the cache, or after scoring the few uncached images now; or
    None with ``meta`` saying why (the score job started or joined, or the strategy unusable)."""
    from segloop.activelearning.ranking import rank_pool
    from segloop.jobs.tasks import score_resource
    from segloop.server import scoring

    try:
        version = scoring.check_model(state.store, model, strat)
    except ApiError as exc:
        meta.update(fallback="random", reason=exc.message)
        return None
    ids = [r.id for r in pool]
    hits = set(state.score_cache().get(model, version, strat.name, strat.params, ids))
    plan = scoring.plan(strat, pool, hits, state.settings.score_sync_passes)
    meta.update(model=model, version=version, cached=plan.cached, unscored=plan.unscored)
    if plan.action == "job":
        latest = scoring.latest_job(state.jobs, score_resource(model, version, strat.name, strat.params))
        if latest is not None and not latest.active and scoring.failed_recently(latest):
            meta.update(fallback="random", scoring_job=latest.id, reason=f"scoring failed: {latest.error}")
            return None
        job = _score_job(state, model, version, strat, principal.name)
        meta.update(fallback="random", scoring_job=job.id, retry_after=scoring.retry_after(job, plan.cost),
                    reason=f"{plan.unscored} of {len(pool)} images have no cached {strat.name} score yet; "
                    "a background scoring job fills the cache")
        return None
    if plan.action == "score":
        if strat.name == "mc-dropout":  # dropout switched on: never on the predictor clicks share
            from segloop.ml.predictor import Predictor

            predictor: Any = Predictor.load(state.store, model, version, device=state.settings.device)
        else:
            predictor = state.predictors.get(model, version)
    else:
        predictor = scoring.CachedScoresOnly(model, version)
    try:
        ranking = rank_pool(state.store, strat, predictor=predictor, pool=ids, limit=1, cache=state.score_cache())
    except ValueError as exc:
        meta.update(fallback="random", reason=str(exc))
        return None
    meta["scored_now"] = ranking.scored
    return ranking


@route("POST", "/activelearning/{strategy}")
async def activelearning(strategy: str, request: Request, state: State, cs: Compat, principal: Annotator) -> dict[str, Any]:
    """The next image to annotate among those without a final label; ``{}`` when none is left.

    Model-based strategies (entropy, mc-dropout, tta; ``epistemic`` = mc-dropout) follow
    ``GET /api/v1/next`` (`segloop.server.scoring`): cached scores of the model's current
    version, the few uncached images scored now. Where ``/next`` would answer 202 (a scoring
    job fills the cache) or 409/422 (scoring failed, strategy unusable for the model), this
    answers a random image marked ``"fallback": "random"`` with the reason and the job id:
    MONAI Label's clients know no 202."""
    params = await _json_body(request)
    strat = _strategy(strategy, params)
    pool = [r for r in await run_in_threadpool(state.store.list_images) if r.label_state != "final"]
    if not pool:
        return {}
    meta: dict[str, Any] = {"strategy": strat.name, "params": strat.params, "pool": len(pool)}
    ranking = None
    if strat.needs_model:
        wanted = params.get("model")
        model = str(wanted) if wanted else next((m.name for m in _current_models(state)), None)
        if model is None:
            meta["fallback"], meta["reason"] = "random", "no trained model yet"
        else:
            await run_in_threadpool(state.store.get_model, model)  # 404 for an unknown model
            ranking = await state.pool.run(_model_ranking, state, strat, model, pool, principal, meta)
    final = ranking if ranking is not None else await run_in_threadpool(_rank_random, state, [r.id for r in pool])
    if not final.items:
        return {}
    top = final.items[0]
    rec = await run_in_threadpool(state.store.get_image, top.image_id)
    client = params.get("client_id")
    cs.update_info(f"image:{rec.id}", {"strategy": {strat.name: {"ts": int(time.time()), "client_id": client}}})
    score = None if meta.get("fallback") or not strat.needs_model else top.score
    return {**_image_info(state, rec, cs), "score": score, "segloop": meta}


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
    pool = [r.id for r in state.store.list_images() if r.label_state != "final"]

    def read() -> dict[str, float]:
        scores: dict[str, float] = state.score_cache().get(name, record.current_version, strat.name, strat.params, pool)
        return scores

    scores = await run_in_threadpool(read)
    ordered = sorted(scores.items(), key=lambda kv: -kv[1])
    return {"strategy": strat.name, "params": strat.params, "model": name, "version": record.current_version,
            "scores": [{"id": i, "score": s} for i, s in ordered],
            "missing": [i for i in pool if i not in scores]}
