"""The server's shared state and the dependencies routes use to reach it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool

from segloop.jobs import EventBus, JobRunner
from segloop.jobs.events import Event
from segloop.server.auth import Authenticator, AuthError, Principal
from segloop.server.filecache import FileBytesCache
from segloop.server.settings import ServerSettings
from segloop.server.workers import PredictorCache, SessionManager, WorkerPool

log = logging.getLogger(__name__)


class LiveHub:
    """Fans the thread-side `EventBus` out to asyncio queues, one per WebSocket/SSE client.

    A slow client's queue is bounded: when full, its oldest event is dropped and a
    ``stream.lagged`` marker is sent, so one stuck browser cannot grow the server's memory."""

    def __init__(self, bus: EventBus, queue_size: int = 1000) -> None:
        self.bus = bus
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[asyncio.Queue[Event]] = set()
        self._token: int | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._token = self.bus.subscribe(self._from_thread)

    def stop(self) -> None:
        if self._token is not None:
            self.bus.unsubscribe(self._token)
            self._token = None

    def _from_thread(self, event: Event) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        for q in list(self._clients):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait({"type": "stream.lagged", "seq": event["seq"], "time": event["time"], "data": {}})
                    continue
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue(self.queue_size)
        self._clients.add(q)
        try:
            yield q
        finally:
            self._clients.discard(q)

    @property
    def client_count(self) -> int:
        return len(self._clients)


@dataclass
class ServerState:
    settings: ServerSettings
    store: Any
    runner: JobRunner
    bus: EventBus
    hub: LiveHub
    auth: Authenticator
    pool: WorkerPool
    predictors: PredictorCache
    sessions: SessionManager
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    # several servers on one server database: the link to the others (None with SQLite files)
    cluster: Any = None
    _scores: Any = None
    _scores_lock: threading.Lock = field(default_factory=threading.Lock)
    volumes: FileBytesCache = field(init=False)

    def __post_init__(self) -> None:
        self.volumes = FileBytesCache(self.settings.volume_cache_bytes)

    def score_cache(self) -> Any:
        """The active-learning score cache (``activelearning.db`` in the data folder), opened on first use."""
        from segloop.activelearning.cache import ScoreCache

        with self._scores_lock:
            if self._scores is None:
                self._scores = ScoreCache(self.settings.data)
            return self._scores

    @property
    def jobs(self) -> Any:
        return self.runner.db


def open_store(settings: ServerSettings) -> Any:
    """The server's datastore: local in ``settings.data``, or DICOMweb images on top of it."""
    if settings.dicomweb_url:
        from segloop.store.dicomweb_store import DicomWebDatastore

        return DicomWebDatastore.open(
            settings.data,
            settings.dicomweb_url,
            auth=settings.dicomweb_auth,
            filters=settings.dicomweb_filters,
            cache_bytes=settings.dicomweb_cache_bytes,
            ephemeral=settings.ephemeral,
            timeout=settings.dicomweb_timeout,
        )
    from segloop.store.local import open_datastore

    return open_datastore(settings.data)


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.segloop
    return state


async def server_state(request: Request) -> ServerState:
    """`get_state` as an async dependency: FastAPI runs a plain ``def`` dependency in its thread
    pool, and each such hop waits for the GIL, which compute threads (inference) hold often.
    Cheap dependencies are therefore async and run on the event loop."""
    return get_state(request)


async def current_principal(
    request: Request,
    access_token: str | None = Query(None, description="API or session token, for clients that cannot set headers"),
) -> Principal:
    state = get_state(request)
    authorization = request.headers.get("authorization")
    if authorization and authorization.lstrip().lower().startswith("basic"):
        # a password may need an scrypt check (tens of ms): never on the event loop
        return await run_in_threadpool(state.auth.authenticate, authorization, access_token)
    return state.auth.authenticate(authorization, access_token)  # token: a hash and a lookup


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold ``role`` (or a higher one)."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has(role):
            raise AuthError(403, "forbidden", f"this needs the {role} role; {principal.name} is {principal.role}")
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


def websocket_principal(websocket: WebSocket) -> Principal:
    state: ServerState = websocket.app.state.segloop
    return state.auth.authenticate(
        websocket.headers.get("authorization"), websocket.query_params.get("access_token")
    )
