"""Work that must stay off the event loop: a bounded inference pool, loaded predictors, and
interactive sessions.

- `WorkerPool`: ``workers`` threads plus at most ``queue`` waiting requests. One more request is
  refused at once with `Busy` (HTTP 429 + ``Retry-After`` estimated from recent durations)
  instead of piling up in memory. When the pool falls idle after a long task (a whole-volume
  pass), a worker gives the heap's free pages back to the system (`segloop.heap`).
- `PredictorCache`: loaded model versions (LRU), so a click does not reload a checkpoint.
- `SessionManager`: open interactive sessions (the pre-processed image stays in the session);
  a session unused for ``idle_seconds`` is closed by `expire`, which the app calls periodically.
  ``on_last_closed(image_id)`` is called when the last open session of an image is closed,
  however it ends (DELETE, expiry, a deleted image, the MONAI Label surface): the app releases
  ephemeral images then (`segloop.server.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from segloop.heap import release_free_heap

T = TypeVar("T")
STEP_LINKS = 64  # steps of a session whose changed box is remembered (compact click responses)
BOX_MAX_FRACTION = 0.9  # a change box larger than this share of the volume is sent as the whole mask
log = logging.getLogger(__name__)


class Busy(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


HEAVY_SECONDS = 1.0
"""Work at least this long (a whole-volume pass, not a click) is followed by `release_free_heap`
when the pool is idle."""


class WorkerPool:
    def __init__(self, workers: int, queue: int, name: str = "segloop-infer", nice: int = 5) -> None:
        self.workers = workers
        self.queue = queue
        self.nice = nice
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=self._lower_priority)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._avg_seconds = 2.0

    def _lower_priority(self) -> None:
        """Run compute at a lower CPU priority than the event loop (Linux: per-thread nice; the
        torch threads this thread starts inherit it), so listing and downloads stay fast."""
        if self.nice and hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)

    @property
    def capacity(self) -> int:
        return self.workers + self.queue

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def retry_after(self) -> int:
        with self._lock:
            waiting = max(1, self._in_flight - self.workers + 1)
            return max(1, math.ceil(self._avg_seconds * waiting / self.workers))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            if self._in_flight >= self.capacity:
                full = True
            else:
                full = False
                self._in_flight += 1
        if full:
            ra = self.retry_after()
            raise Busy(
                f"all {self.workers} inference worker(s) are busy and {self.queue} request(s) are waiting; retry later",
                ra,
            )
        t0 = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            dt = time.monotonic() - t0
            with self._lock:
                self._in_flight -= 1
                self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * dt
                idle = self._in_flight == 0
            if idle and dt >= HEAVY_SECONDS:
                # a whole-volume pass has freed its arrays and nothing else runs: give the heap's free
                # pages back (segloop.heap), on a worker so the event loop does not wait for it
                with contextlib.suppress(RuntimeError):  # the pool is shutting down
                    self._executor.submit(release_free_heap)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` on a worker thread without back-pressure accounting (benchmarks compare a
        bare in-process call with the HTTP route on the very same thread, priority and torch pool)."""
        return self._executor.submit(fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PredictorCache:
    """Loaded predictors keyed by (model, version); ``version=None`` resolves to the current one.
    ``mirror=False``: their automatic results take one network pass (no test-time mirroring)."""

    def __init__(self, store: Any, device: str | None, size: int = 3, mirror: bool = True) -> None:
        self.store = store
        self.device = device
        self.size = size
        self.mirror = mirror
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def get(self, model: str, version: int | None = None) -> Any:
        from segloop.ml.predictor import Predictor

        if version is None:
            record = self.store.get_model(model)
            version = record.current_version
        if version is not None:
            with self._lock:
                hit = self._items.get((model, version))
                if hit is not None:
                    self._items.move_to_end((model, version))
                    return hit
        predictor = Predictor.load(self.store, model, version, device=self.device)
        if not self.mirror:
            predictor.mirror_axes = ()
        with self._lock:
            self._items[(model, predictor.version)] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return predictor

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == model]:
                self._items.pop(key, None)


@dataclass
class SessionEntry:
    id: str
    image_id: str
    model: str
    version: int
    owner: str
    session: Any
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    encoder: Any = None
    # step -> (previous step, box the step changed), the last STEP_LINKS steps: which box to send
    # a client that holds an earlier step (`box_since`)
    links: OrderedDict[int, tuple[int, tuple[slice, ...]]] = field(default_factory=OrderedDict)
    _links_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def encode(
        self, label: Any, tag: int | None = None, since: tuple[int, tuple[slice, ...]] | None = None
    ) -> bytes:
        """The session's mask as gzip NIfTI; large masks through an incremental encoder that
        re-compresses only the blocks the last step changed (`segloop.server.maskcodec`).
        ``tag``/``since``: the step's hint for that encoder (`IncrementalLabelEncoder.encode`):
        this mask's step, and ``(previous step, box)`` — when the previous step is the last mask
        encoded, only ``box`` is compared with it instead of the whole mask."""
        import numpy as np

        from segloop.server.maskcodec import INCREMENTAL_MIN_VOXELS, IncrementalLabelEncoder, label_nifti_gz

        data = np.asarray(label.array)
        if data.ndim != 3 or data.dtype != np.uint8 or data.size < INCREMENTAL_MIN_VOXELS:
            return label_nifti_gz(label)
        if self.encoder is None:
            self.encoder = IncrementalLabelEncoder(label.affine, (data.shape[0], data.shape[1], data.shape[2]))
        encoded: bytes = self.encoder.encode(data, tag=tag, since=since)
        return encoded

    def encode_prediction(self, pred: Any) -> bytes:
        """``encode`` of a session step's mask with the step's own hint (``Prediction.step`` /
        ``Prediction.changed``); when the encoder last encoded an earlier step than the one before
        (clients of the compact response skip it), the union of the boxes since that step."""
        self.note(pred)
        step = getattr(pred, "step", None)
        since = getattr(pred, "changed", None)
        last = None if self.encoder is None else self.encoder.last_tag
        if since is not None and step is not None and last is not None and since[0] != last:
            box = self.box_since(last, pred)
            since = None if box is None else (last, box)
        return self.encode(pred.label, tag=step, since=since)

    def note(self, pred: Any) -> None:
        """Remember which box a step changed (every step of the session should pass here: the
        routes call it for clicks, undo, redo and uploaded masks)."""
        changed = getattr(pred, "changed", None)
        step = getattr(pred, "step", None)
        if changed is None or step is None:
            return
        with self._links_lock:
            self.links[int(step)] = (int(changed[0]), tuple(changed[1]))
            self.links.move_to_end(int(step))
            while len(self.links) > STEP_LINKS:
                self.links.popitem(last=False)

    def box_since(self, since: int, pred: Any) -> tuple[slice, slice, slice] | None:
        """The box outside which ``pred``'s mask equals the mask of step ``since`` (empty when
        ``pred`` is that step); None when unknown (a step not noted, or too old) or when the box
        would be most of the volume (then the whole mask is the better answer)."""
        from segloop.server.maskcodec import box_bounds, box_size, box_union

        shape = tuple(pred.label.array.shape)
        step = int(getattr(pred, "step", 0) or 0)
        if since == step:
            return (slice(0, 0), slice(0, 0), slice(0, 0))
        if since > step or since < 1:
            return None
        box = None
        cur = step
        while cur != since:
            with self._links_lock:
                link = self.links.get(cur)
            if link is None or link[0] >= cur:
                return None
            box = box_union(box, box_bounds(link[1], shape))
            cur = link[0]
            if cur < since:
                return None
        if box is None or box_size(box) > BOX_MAX_FRACTION * math.prod(shape):
            return None
        return box

    def info(self, idle_seconds: float) -> dict[str, Any]:
        details = self.session.info() if hasattr(self.session, "info") else {}
        return {
            "id": self.id,
            "image_id": self.image_id,
            "model": self.model,
            "version": self.version,
            "owner": self.owner,
            "clicks": details.get("clicks", []),
            "undo_depth": details.get("undo_depth", 0),
            "redo_depth": details.get("redo_depth", 0),
            "expires_in_seconds": max(0.0, round(idle_seconds - (time.monotonic() - self.last_used), 1)),
        }


class SessionManager:
    def __init__(
        self, idle_seconds: float, max_sessions: int, on_last_closed: Callable[[str], None] | None = None
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self.on_last_closed = on_last_closed
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionEntry] = {}

    def reserve(self) -> None:
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise Busy(
                    f"{self.max_sessions} interactive sessions are open; close one or wait for idle ones to expire",
                    max(1, int(self.idle_seconds / 10)),
                )

    def add(self, image_id: str, model: str, version: int, owner: str, session: Any) -> SessionEntry:
        entry = SessionEntry(secrets.token_hex(12), image_id, model, version, owner, session)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise Busy(f"{self.max_sessions} interactive sessions are open; close one", 5)
            self._sessions[entry.id] = entry
        return entry

    def get(self, session_id: str) -> SessionEntry | None:
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is not None:
                entry.last_used = time.monotonic()
            return entry

    def close(self, session_id: str) -> SessionEntry | None:
        with self._lock:
            entry = self._sessions.pop(session_id, None)
            last = entry is not None and not any(s.image_id == entry.image_id for s in self._sessions.values())
        if entry is not None:
            entry.closed = True
            if last and self.on_last_closed is not None:
                try:
                    self.on_last_closed(entry.image_id)
                except Exception:  # a failing listener must not make closing a session fail
                    log.exception("on_last_closed(%s) failed", entry.image_id)
        return entry

    def image_ids(self) -> set[str]:
        """Images with at least one open session."""
        with self._lock:
            return {s.image_id for s in self._sessions.values()}

    def close_image(self, image_id: str) -> int:
        with self._lock:
            ids = [s.id for s in self._sessions.values() if s.image_id == image_id]
        for sid in ids:
            self.close(sid)
        return len(ids)

    def expire(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            stale = [
                s.id for s in self._sessions.values() if now - s.last_used > self.idle_seconds and not s.lock.locked()
            ]
        for sid in stale:
            self.close(sid)
        return stale

    def list(self) -> list[SessionEntry]:
        with self._lock:
            return list(self._sessions.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
