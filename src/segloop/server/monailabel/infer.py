"""The MONAI-Label-compatible `/infer/{model}`: automatic segmentation, clicks (deepgrow), scribbles."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click
from segloop.server.errors import ApiError
from segloop.server.monailabel import convert
from segloop.server.monailabel.common import (
    Compat,
    _json_body,
    _read_single_volume,
    _receive,
    _resolve_image,
    _resolve_model,
    route,
)
from segloop.server.monailabel.state import MAX_IMPLICIT_SESSIONS, CompatState
from segloop.server.routes import Annotator, State
from segloop.server.state import ServerState
from segloop.server.workers import Busy
from segloop.store.records import ImageRecord

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
                            "model_seconds": round(float(getattr(pred, "seconds", 0.0) or 0.0), 4),
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
    headers = {"X-Segloop-Model": str(meta["segloop"]["model"]), "X-Segloop-Version": str(meta["segloop"]["version"]),
               # the network's own time, as the native routes answer it (the rest is the route's)
               "X-Segloop-Seconds": f"{meta['segloop']['model_seconds']:.4f}"}
    if out_kind == "json":
        return JSONResponse(meta, headers=headers)
    filename = convert.result_filename(stem, fmt[0])
    media = convert.MEDIA_TYPES[fmt[0]]
    if out_kind == "image":
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(data, media_type=media, headers=headers)
    body, content_type = convert.multipart(meta, filename, data, media)
    return Response(body, media_type=content_type, headers=headers)
