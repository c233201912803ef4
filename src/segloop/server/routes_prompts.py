"""Prompts beyond clicks in an interactive session: a box, a lasso, scribbles.

Each prompt is one step of the session (`segloop.ml.prompt_session`): `undo` takes it back
whole, `redo` re-applies it, a save stores the mask with source ``interactive``. The response
is the session's mask, exactly as for clicks (gzip NIfTI, or with ``since`` only the changed
box). Classes by name or value (``background`` for background scribbles), points as voxel
indices ``[i, j, k]`` of the image as stored. Bad input answers 422 and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from segloop.server.errors import ApiError
from segloop.server.routes import Annotator, State
from segloop.server.routes_sessions import (
    SESSION_MASK_RESPONSE,
    SessionId,
    Since,
    _schemas,
    _session,
    _session_reply,
)

router = APIRouter(prefix="/api/v1")

Point = list[int]


class BoxBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    class_: str | int = Field(alias="class", description="the structure's class (name or value)")
    box: list[Point] = Field(
        min_length=2,
        max_length=2,
        description="two opposite corners [[i0, j0, k0], [i1, j1, k1]] (inclusive); equal on one axis: a 2D box on that slice",
    )


class LassoBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    class_: str | int = Field(alias="class", description="the structure's class (name or value)")
    lasso: list[Point] = Field(
        min_length=3, max_length=10_000, description="the closed contour's vertices, all on one slice (sharing i, j or k)"
    )


class StrokeBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    class_: str | int = Field(alias="class", description="class name or value; 'background' for a background stroke")
    points: list[Point] = Field(min_length=1, max_length=10_000, description="the stroke's polyline (consecutive points are joined)")
    radius: int = Field(0, ge=0, le=10, description="thickness: a ball of this radius (voxels) along the line")


class GraphCutBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    lam: float = Field(2.0, alias="lambda", ge=0, le=1000, description="weight of the smoothness term")
    sigma: float | None = Field(None, gt=0, description="intensity scale of the smoothness term (default: estimated)")
    margin_mm: float = Field(15.0, ge=0, le=500, description="the region cut: the scribbles' box grown by this")


class ScribblesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scribbles: list[StrokeBody] = Field(min_length=1, max_length=100)
    mode: Literal["guidance", "graphcut"] = Field(
        "guidance",
        description="guidance: the strokes guide the shared model (sub-sampled into clicks) and their voxels take "
        "their class; graphcut: a min-cut refinement of the current mask seeded by the strokes (no model call)",
    )
    graphcut: GraphCutBody | None = None


async def _run(session_id: str, state: Any, principal: Any, since: int | None, apply: Callable[[Any, Any], Any]) -> Response:
    """The prompt step on the worker pool: ``apply(session, schema)`` -> Prediction; 422 on ValueError."""
    entry = _session(state, session_id, principal)
    t_route = time.perf_counter()

    def work() -> Response:
        t_worker = time.perf_counter()
        schema = _schemas.get(state.store)
        with entry.lock:
            if entry.closed:
                raise ApiError(404, "not_found", f"session {session_id!r} was closed")
            t_step = time.perf_counter()
            try:
                pred = apply(entry.session, schema)
            except ValueError as exc:
                raise ApiError(422, "invalid_prompt", str(exc)) from exc
        t_encode = time.perf_counter()
        response: Response = _session_reply(entry, pred, since)
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={(b - a) * 1e3:.1f}"
            for name, a, b in (("queue", t_route, t_worker), ("prompt", t_step, t_encode),
                               ("encode", t_encode, time.perf_counter()))
        )
        return response

    result: Response = await state.pool.run(work)
    return result


@router.post("/sessions/{session_id}/box", tags=["sessions"], response_class=Response, responses=SESSION_MASK_RESPONSE)
async def add_box(session_id: SessionId, body: BoxBody, state: State, principal: Annotator, since: Since = None) -> Response:
    """A box around a structure: a 3D box (the class is removed outside it) or a 2D box on one
    slice (removed outside the rectangle on that slice); the model segments what is inside from a
    click at its centre (or at what the mask already has of the class there) and negative clicks
    just outside. One undoable step; the mask comes back as for clicks."""
    from segloop.ml.prompts import parse_box

    spec = {"class": body.class_, "box": body.box}

    def apply(session: Any, schema: Any) -> Any:
        return session.add_box(parse_box(spec, schema, session.image.shape, values=session.predictor.class_values))

    result: Response = await _run(session_id, state, principal, since, apply)
    return result


@router.post("/sessions/{session_id}/lasso", tags=["sessions"], response_class=Response, responses=SESSION_MASK_RESPONSE)
async def add_lasso(session_id: SessionId, body: LassoBody, state: State, principal: Annotator, since: Since = None) -> Response:
    """A closed contour on one slice: its inside on that slice becomes the class exactly, and the
    model grows it into 3D (clicks inside it, negative clicks on a ring just outside). One undoable
    step; the mask comes back as for clicks."""
    from segloop.ml.prompts import parse_lasso

    spec = {"class": body.class_, "lasso": body.lasso}

    def apply(session: Any, schema: Any) -> Any:
        return session.add_lasso(parse_lasso(spec, schema, session.image.shape, values=session.predictor.class_values))

    result: Response = await _run(session_id, state, principal, since, apply)
    return result


@router.post(
    "/sessions/{session_id}/scribbles", tags=["sessions"], response_class=Response, responses=SESSION_MASK_RESPONSE
)
async def add_scribbles(
    session_id: SessionId, body: ScribblesBody, state: State, principal: Annotator, since: Since = None
) -> Response:
    """Foreground / background strokes, as model guidance (``mode=guidance``) or as the seeds of a
    graph-cut refinement of the current mask (``mode=graphcut``, parameters in ``graphcut``). One
    undoable step; the mask comes back as for clicks."""
    from segloop.ml.graphcut import GraphCutParams
    from segloop.ml.prompts import parse_strokes

    spec = [{"class": s.class_, "points": s.points, "radius": s.radius} for s in body.scribbles]
    g = body.graphcut or GraphCutBody.model_validate({})
    params = GraphCutParams(lam=g.lam, sigma=g.sigma, margin_mm=g.margin_mm)

    def apply(session: Any, schema: Any) -> Any:
        strokes = parse_strokes(spec, schema, session.image.shape, values=session.predictor.class_values)
        return session.add_scribbles(strokes, body.mode, params)

    result: Response = await _run(session_id, state, principal, since, apply)
    return result
