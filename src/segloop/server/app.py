"""The FastAPI application: `create_app(settings)`.

Routes (all under ``/api/v1``; OpenAPI at ``/api/v1/openapi.json``, docs at ``/api/v1/docs``):

======  =============================================  =========  ==========================================
method  path                                           role       what
======  =============================================  =========  ==========================================
GET     /health, /version                              none       liveness, load summary / version
POST    /auth/login; GET /auth/me                      none/any   session token; who am I
GET     /schema; PUT /schema                           ann/admin  label schema
GET     /images?label_state=&offset=&limit=            annotator  paged list; &modality=&study_date=&description=
                                                                  filter (QIDO-RS with --dicomweb, metadata otherwise)
POST    /images (multipart ``file``, repeatable)       reviewer   streamed upload, validated, all or nothing
GET     /images/{id}; DELETE /images/{id}              ann/admin  metadata; delete
GET     /images/{id}/volume                            annotator  gzip NIfTI
GET     /images/{id}/preview                           annotator  the middle slice, gzip NIfTI (a PACS series: fetched alone)
GET     /images/{id}/labels                            annotator  revisions
POST    /images/{id}/labels (multipart)                annotator  new revision; stale base → 409 + current
GET     /images/{id}/labels/{rev|latest}[/info]        annotator  gzip NIfTI / JSON
POST    /images/{id}/labels/{rev}/final                reviewer   mark final
GET     /architectures                                 annotator  trainable networks
GET     /models, /models/{name}                        annotator  versions and metrics
POST    /models/{name}/select, /rollback               admin      current version
POST    /models/{name}/train                           admin      training job (202); one per model → 409
POST    /models/{name}/infer                           annotator  automatic label (gzip NIfTI), optional save
POST    /models/{name}/evaluate                        reviewer   evaluation job over final labels
POST    /sessions; GET/DELETE /sessions/{id}           annotator  interactive session
POST    /sessions/{id}/clicks, /undo, /redo            annotator  updated mask (gzip NIfTI); redo: 409 if none
GET     /sessions/{id}/label                           annotator  current mask (gzip NIfTI)
PUT     /sessions/{id}/label (multipart ``file``)      annotator  replace the mask (brushed edits); undoable
POST    /sessions/{id}/save                            annotator  save as revision (source interactive)
GET     /next?strategy=&model=&count=&diversity=       annotator  next image(s) with score and rank; 202 + job
                                                                  while a large pool is scored (scoring.py)
GET     /activelearning/strategies                     annotator  what /next offers
POST    /evaluations; GET /evaluations[/{id}]          annotator  evaluate a revision or a model; history
GET     /evaluations/{id}/discrepancy                  annotator  discrepancy map (gzip NIfTI)
GET     /jobs, /jobs/{id}, /jobs/{id}/log              annotator  jobs (shared by all clients)
POST    /jobs                                          reviewer   infer-batch / evaluate / score job
POST    /jobs/{id}/cancel                              owner/adm  cancel
GET     /events (SSE); WS /events/ws                   annotator  live events
======  =============================================  =========  ==========================================

Back-pressure: inference, clicks and single-image evaluations share a pool of
``inference_workers`` threads with ``inference_queue`` waiting places; beyond that → 429 with
``Retry-After``. Jobs run in child processes (`segloop.jobs.JobRunner`).

On a server database (``--db postgresql://...``) several servers share one store: a
`segloop.jobs.relay.ClusterLink` relays events between them and marks the running jobs of a dead
server interrupted, and interactive sessions are tied to the server that opened them (another
server answers 421 with its URL: `segloop.server.cluster`). docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

from segloop import __version__
from segloop.jobs import EventBus, JobRunner
from segloop.server import routes, routes_ml, routes_next, routes_pacs, routes_prompts, routes_sessions
from segloop.server.auth import Authenticator, AuthError, Principal
from segloop.server.errors import error_body, install_error_handlers
from segloop.server.settings import ServerSettings
from segloop.server.state import LiveHub, ServerState, get_state, open_store, require, websocket_principal
from segloop.server.webapp import mount_web_app
from segloop.server.workers import Busy, PredictorCache, SessionManager, WorkerPool

log = logging.getLogger(__name__)

EVENT_TYPES = ("job.state", "job.progress", "job.metrics", "model.version", "label.revision", "image.added",
               "image.deleted", "schema.changed", "evaluation", "label.sent", "image.released", "image.kept")


def _open_state(settings: ServerSettings) -> ServerState:
    settings.data.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)  # local, or DICOMweb images over a local store (state.py)
    bus = EventBus()
    runner = JobRunner(
        settings.data,
        bus=bus,
        mode=settings.job_mode,
        max_running=settings.max_running_jobs,
        child_threads=settings.job_threads,
        idle_kinds=frozenset({"train", "score"}) if settings.job_idle_class else frozenset(),
        store=store if settings.job_mode == "thread" else None,
    )
    cluster = None
    sessions: SessionManager
    if runner.db.sqlite:
        sessions = SessionManager(settings.session_idle_seconds, settings.max_sessions)
    else:
        # a server database may be shared by several servers: relay events, register this server,
        # reap the jobs of dead ones, and tie interactive sessions to their server (docs/deploy.md)
        from segloop.jobs.relay import ClusterLink
        from segloop.server.cluster import ClusterSessions

        cluster = ClusterLink(
            runner.db, bus, runner.identity, settings.advertised_url, stale_seconds=settings.cluster_stale_seconds
        )
        sessions = ClusterSessions(cluster, settings.session_idle_seconds, settings.max_sessions)
    return ServerState(
        settings=settings,
        store=store,
        runner=runner,
        bus=bus,
        hub=LiveHub(bus),
        auth=Authenticator(settings.auth),
        pool=WorkerPool(settings.inference_workers, settings.inference_queue, nice=settings.inference_nice),
        predictors=PredictorCache(store, settings.device, mirror=settings.mirror),
        sessions=sessions,
        cluster=cluster,
    )


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the app. Raises `SettingsError` (e.g. a non-loopback host without auth)."""
    settings.resolve()
    state = _open_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        previous_interval = sys.getswitchinterval()
        if settings.gil_switch_interval is not None:
            sys.setswitchinterval(settings.gil_switch_interval)  # see ServerSettings
        if settings.inference_threads:
            import torch

            torch.set_num_threads(settings.inference_threads)
        state.hub.start(asyncio.get_running_loop())
        if state.cluster is not None:
            await asyncio.to_thread(state.cluster.start)  # before the runner: its recovery events are relayed
        state.runner.start()
        if state.runner.interrupted_on_start:
            log.warning("marked %d job(s) interrupted (the server stopped while they ran)",
                        len(state.runner.interrupted_on_start))
        releaser = None
        if getattr(state.store, "ephemeral", False):
            releaser = EphemeralReleaser(state, asyncio.get_running_loop())
            state.sessions.on_last_closed = releaser.session_ended
        state.background.append(asyncio.create_task(_expire_sessions(state, releaser)))
        try:
            yield
        finally:
            for task in state.background:
                task.cancel()
            state.hub.stop()
            await asyncio.to_thread(state.runner.stop)
            if state.cluster is not None:  # after the runner: its jobs' last states reach the others
                await asyncio.to_thread(state.cluster.stop)
            state.pool.shutdown()
            close = getattr(state.store, "close", None)
            if callable(close):
                close()
            sys.setswitchinterval(previous_interval)

    app = FastAPI(
        title="segloop",
        version=__version__,
        description="AI-assisted segmentation of 3D medical images: images, label revisions, models, "
        "interactive sessions, evaluation and background jobs with live events.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.segloop = state
    install_error_handlers(app)

    @app.exception_handler(Busy)
    async def _busy(_: Any, exc: Busy) -> JSONResponse:
        return JSONResponse(
            error_body("busy", str(exc), retry_after=exc.retry_after),
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    app.include_router(routes.router)
    app.include_router(routes_ml.router)
    app.include_router(routes_next.router)
    app.include_router(routes_sessions.router)
    app.include_router(routes_prompts.router)
    _event_routes(app)
    app.include_router(routes_pacs.router)

    from segloop.server.monailabel import router as monailabel_router  # MONAI-Label-compatible surface

    app.include_router(monailabel_router)
    # The browser app (web/dist) at "/": last, because it adds a catch-all GET route.
    mount_web_app(app)
    return app


async def _expire_sessions(state: ServerState, releaser: EphemeralReleaser | None = None) -> None:
    interval = max(1.0, min(30.0, state.sessions.idle_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        for sid in state.sessions.expire():  # closing the last session of an image releases it
            log.info("interactive session %s expired", sid)
        if releaser is not None:
            try:
                await releaser.release_idle()
            except Exception:
                log.exception("ephemeral: releasing idle images failed")


RELEASE_GRACE_SECONDS = 2.0


class EphemeralReleaser:
    """Ephemeral mode (``--ephemeral``): images fetched from the PACS leave the local disk

    * when the **last interactive session** on the image is closed or expires — after a grace of
      `RELEASE_GRACE_SECONDS`, and only if no new session opened on it meanwhile;
    * when a fetched image **without a session** is left unused (no fetch, view or save through
      the API) for the session idle time (``--session-idle``), e.g. viewed or brushed only;
    * at server stop (`DicomWebDatastore.close`).

    An image holding a label revision that was not sent to the PACS is kept (`DicomWebDatastore.release`
    answers ``unsent``): event ``image.kept`` names the revisions; it goes once its label is sent
    and it is idle again, or by ``POST /images/{id}/release?discard_unsent=true``. A release
    publishes ``image.released`` (with ``why``: session_ended / idle) and drops the in-memory volume.
    """

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop, grace: float = RELEASE_GRACE_SECONDS) -> None:
        self.state = state
        self.loop = loop
        self.grace = grace
        self._tasks: set[asyncio.Task[Any]] = set()

    def session_ended(self, image_id: str) -> None:
        """`SessionManager.on_last_closed`: from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop has stopped: close() cleans up
            self.loop.call_soon_threadsafe(self.loop.call_later, self.grace, self._spawn, image_id)

    def _spawn(self, image_id: str) -> None:
        task = self.loop.create_task(self.release(image_id, "session_ended"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def release(self, image_id: str, why: str) -> Any:
        store = self.state.store
        if not store.is_ephemeral_image(image_id) or image_id in self.state.sessions.image_ids():
            return None
        try:
            result = await asyncio.to_thread(store.release, image_id)
        except Exception:
            log.exception("ephemeral: releasing %s failed", image_id)
            return None
        routes_pacs.publish_release(self.state, result, why)
        if result.reason == "unsent":
            store.touch(image_id)  # asked again after the next idle period, not every round
        return result

    async def release_idle(self) -> None:
        store = self.state.store
        busy = self.state.sessions.image_ids()
        for image_id in await asyncio.to_thread(store.idle_ephemeral, self.state.sessions.idle_seconds, busy):
            await self.release(image_id, "idle")


def _parse_types(types: str | None) -> set[str] | None:
    if not types:
        return None
    wanted = {t.strip() for t in types.split(",") if t.strip()}
    return wanted or None


def _event_routes(app: FastAPI) -> None:
    @app.get(
        "/api/v1/events",
        tags=["events"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    async def sse(
        state: Annotated[ServerState, Depends(get_state)],
        _: Annotated[Principal, Depends(require("annotator"))],
        types: Annotated[str | None, Query(max_length=500, description="comma-separated event types")] = None,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        """Live events as Server-Sent Events (``event: <type>``, ``data: <json>``, ``id: <seq>``):
        job.state, job.progress, job.metrics, model.version, label.revision, image.added/deleted,
        schema.changed, evaluation. Reconnect with ``Last-Event-ID`` to replay recent events."""
        wanted = _parse_types(types)
        try:
            after = int(last_event_id) if last_event_id else None
        except ValueError:
            after = None

        async def stream() -> AsyncIterator[bytes]:
            async with state.hub.client() as q:
                yield b": segloop events\n\n"
                if after is not None:
                    for event in state.bus.recent(after):
                        if wanted is None or event["type"] in wanted:
                            yield _sse(event)
                while True:
                    try:
                        event = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if wanted is None or event["type"] in wanted or event["type"] == "stream.lagged":
                        yield _sse(event)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.websocket("/api/v1/events/ws")
    async def ws(websocket: WebSocket) -> None:
        """Live events over WebSocket: one JSON text message per event. Auth: ``access_token``
        query parameter or Authorization header; ``types`` filters as for SSE."""
        try:
            websocket_principal(websocket)
        except AuthError as exc:
            await websocket.close(code=4401 if exc.status == 401 else 4403, reason=exc.message[:120])
            return
        state: ServerState = websocket.app.state.segloop
        wanted = _parse_types(websocket.query_params.get("types"))
        await websocket.accept()
        async with state.hub.client() as q:
            await websocket.send_json({"type": "stream.open", "seq": 0, "data": {"version": __version__}})

            async def drain_incoming() -> None:
                while True:
                    await websocket.receive_text()  # pings from the client; ignored

            reader = asyncio.create_task(drain_incoming())
            try:
                while True:
                    getter = asyncio.create_task(q.get())
                    done, _ = await asyncio.wait({getter, reader}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done:
                        getter.cancel()
                        break
                    if getter not in done:
                        getter.cancel()
                        await websocket.send_json({"type": "stream.keepalive", "seq": 0, "data": {}})
                        continue
                    event = getter.result()
                    if wanted is None or event["type"] in wanted or event["type"] == "stream.lagged":
                        await websocket.send_text(json.dumps(event, default=str))
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                reader.cancel()


def _sse(event: dict[str, Any]) -> bytes:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n".encode()
