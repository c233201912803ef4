"""What a job handler sees: its parameters, the store, and ways to report progress and logs.

The same `JobContext` API is used whether the job runs in a child process (the default: the
reports travel over a multiprocessing queue to the runner, which persists and publishes them) or
in a thread of the runner's process.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from segloop.jobs.records import JobCancelled, JobRejected

Message = tuple[Any, ...]
Sink = Callable[[Message], None]


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class Peers(Protocol):
    """The other ranks (1..N-1) of a distributed job, started elsewhere by the executor (Ray
    actors, `segloop.jobs.ray_executor`); the job's own process is rank 0."""

    host: str  # the address the other ranks reach rank 0 at

    def launch(self, port: int) -> None:
        """Start the ranks' work: each runs ``target(rank=r, world=N, host=host, port=port, **kwargs)``."""

    def failure(self, wait: float) -> str | None:
        """What went wrong with another rank (it died or raised), waiting up to ``wait`` seconds
        for news; None when none failed."""

    def finish(self, timeout: float) -> list[Any]:
        """The other ranks' results, in rank order; raises RuntimeError naming a failed rank."""
        ...

    def close(self) -> None:
        """Stop whatever still runs (idempotent)."""


# (world, target "module:function", kwargs, the job's context) -> the other ranks, ready to launch
PeersFactory = Callable[[int, str, dict[str, Any], "JobContext"], Peers]


class JobContext:
    def __init__(
        self,
        job_id: str,
        kind: str,
        params: dict[str, Any],
        root: Path,
        sink: Sink,
        cancel: CancelFlag,
        store: Any | None = None,
        db_url: str | None = None,
        peers: PeersFactory | None = None,
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.params = params
        self.root = Path(root)
        self._sink = sink
        self._cancel = cancel
        self._store = store
        self.db_url = db_url  # the data folder's server database, if any (None: $SEGLOOP_DB / SQLite)
        self._peers = peers

    def start_peers(self, world: int, target: str, kwargs: dict[str, Any]) -> Peers:
        """Start ranks 1..``world``-1 of a distributed job (waits for their workers, cancellable).
        Raises `JobRejected` where the executor cannot (jobs in local processes or threads)."""
        if self._peers is None:
            raise JobRejected(
                f"a job on {world} workers needs jobs on a Ray cluster (segloop serve --jobs ray or --jobs "
                f"ray://HOST:PORT); this server runs each job in one local process: use workers 1"
            )
        return self._peers(world, target, kwargs, self)

    @property
    def store(self) -> Any:
        """The data folder's datastore (opened on first use in a child process)."""
        if self._store is None:
            from segloop.store.local import open_datastore

            self._store = open_datastore(self.root, url=self.db_url)
        return self._store

    def progress(self, fraction: float | None, message: str = "", *, force: bool = False, **detail: Any) -> None:
        """Report progress: ``fraction`` in [0, 1] (None: unknown), a short message, and
        structured detail (epoch, loss, val_dice, eta_seconds...). ``force`` bypasses throttling
        (use it for epoch ends)."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self._sink(("progress", fraction, message, detail, force))

    def metrics(self, data: dict[str, Any]) -> None:
        """Append one record to the job's metrics stream (e.g. per-epoch loss and Dice)."""
        self._sink(("metrics", data))

    def log(self, line: str) -> None:
        self._sink(("log", str(line)))

    def event(self, type_: str, data: dict[str, Any]) -> None:
        """Publish a live event (``label.revision``, ``model.version``...)."""
        self._sink(("event", type_, data))

    @property
    def cancel_flag(self) -> CancelFlag:
        """The cancel flag itself (a `threading.Event` or a multiprocessing one): ``is_set()``."""
        return self._cancel

    def cancelled(self) -> bool:
        return bool(self._cancel.is_set())

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled("cancelled")


class _SinkLogHandler(logging.Handler):
    def __init__(self, ctx: JobContext) -> None:
        super().__init__(level=logging.INFO)
        self.ctx = ctx
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ctx.log(self.format(record))
        except Exception:
            self.handleError(record)


def resolve_handler(path: str) -> Callable[[JobContext], dict[str, Any] | None]:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    handler: Callable[[JobContext], dict[str, Any] | None] = getattr(module, attr)
    return handler


def execute(
    job_id: str,
    kind: str,
    handler_path: str,
    params: dict[str, Any],
    root: Path,
    sink: Sink,
    cancel: CancelFlag,
    store: Any | None = None,
    capture_logs: bool = False,
    db_url: str | None = None,
    peers: PeersFactory | None = None,
) -> None:
    """Run one handler and report its outcome as the last message on ``sink``:
    ``("done", result)``, ``("cancelled", message)`` or ``("failed", error, traceback)``.
    ``peers``: how this executor starts the other ranks of a distributed job (None: it cannot)."""
    ctx = JobContext(job_id, kind, params, root, sink, cancel, store, db_url, peers)
    log_handler: logging.Handler | None = None
    if capture_logs:
        log_handler = _SinkLogHandler(ctx)
        logging.getLogger().addHandler(log_handler)
        logging.getLogger().setLevel(logging.INFO)
    t0 = time.monotonic()
    try:
        handler = resolve_handler(handler_path)
        result = handler(ctx)
        if ctx.cancelled():
            sink(("cancelled", "cancelled"))
        else:
            sink(("done", result or {}, time.monotonic() - t0))
    except JobCancelled as exc:
        sink(("cancelled", str(exc) or "cancelled"))
    except Exception as exc:
        if _is_cancellation(exc):
            sink(("cancelled", str(exc) or "cancelled"))
        else:
            sink(("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        if log_handler is not None:
            logging.getLogger().removeHandler(log_handler)


def _is_cancellation(exc: BaseException) -> bool:
    # segloop.ml.training.TrainingCancelled, without importing torch here
    return type(exc).__name__ == "TrainingCancelled"


def child_main(
    job_id: str,
    kind: str,
    handler_path: str,
    params: dict[str, Any],
    root: str,
    queue: Any,
    cancel: Any,
    threads: int | None,
    nice: int,
    idle_class: bool = False,
    db_url: str | None = None,
) -> None:
    """Entry point of a job's child process (spawned).

    It runs at ``nice`` and, with ``idle_class`` (Linux), in the ``SCHED_IDLE`` scheduling class:
    it then gets a core only when nothing else wants it, which a nice value alone does not give
    (nice 10 still takes ~10% of a core from a nice-0 thread it competes with). The threads it
    starts afterwards (torch's) inherit both."""
    import os
    import threading

    parent = os.getppid()

    def orphan_watch() -> None:
        # the server died without stopping us (SIGKILL, OOM): do not train on for nobody
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=orphan_watch, name="segloop-orphan-watch", daemon=True).start()

    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if idle_class and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ["SEGLOOP_JOB_THREADS"] = str(threads)
        try:
            import torch

            torch.set_num_threads(threads)
            torch.set_num_interop_threads(1)
        except Exception:  # torch missing or threads already fixed: run with the defaults
            pass
    execute(job_id, kind, handler_path, params, Path(root), queue.put, cancel, capture_logs=True, db_url=db_url)
    queue.close()
    queue.join_thread()
