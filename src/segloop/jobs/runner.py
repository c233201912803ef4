"""The embedded job runner.

Design:

- Every job is a row in the data folder's ``jobs.db`` (`JobDB`) before anything runs, so a job
  submitted by one client (or the CLI) is visible to and cancellable from any other.
- A dispatcher thread claims queued jobs (an atomic ``queued -> running`` transition stamped with
  this runner's ``host:pid``) while fewer than ``max_running`` run, and watches the database's
  ``cancel_requested`` flags so that a cancel from another process reaches the job too.
- Where a claimed job's handler executes is the `JobExecutor`'s business
  (`segloop.jobs.executors`): by default each job runs in its own **spawned child process** at a
  lower CPU priority with a bounded number of torch threads: training never holds the server's
  GIL nor its event loop, and a crash of the job (or an out-of-memory kill) cannot take the
  server down. ``mode="thread"`` runs handlers in a thread of this process instead (tests, tiny
  jobs); ``mode="ray"`` / ``"ray://HOST:PORT"`` as Ray tasks on a cluster
  (`segloop.jobs.ray_executor`). Whatever the executor, the handler's progress, metrics, log
  lines and events come back here: the runner persists them (progress throttled), publishes
  them on the `EventBus` and records the outcome.
- Exclusivity: a job may name a ``resource`` (``train:<model>``); while an active (queued or
  running) job holds it, a second submission raises `JobConflict` (HTTP 409). So one training
  job at a time per model; other jobs queue.
- Restart: `start()` marks the jobs whose runner is gone (running or queued) as
  ``interrupted``. A model's current version is untouched: training only records a version at
  its very end. On a server database shared by several servers, queued jobs are left for any
  of them to claim, and the running jobs of a server that died on another machine are marked
  by the survivors (`segloop.jobs.relay`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segloop.jobs.context import Message
from segloop.jobs.db import JobDB, runner_identity, utcnow
from segloop.jobs.events import EventBus
from segloop.jobs.executors import Execution, ExecutorConfig, JobExecutor, is_ray_mode, make_executor
from segloop.jobs.records import ACTIVE_STATES, JOB_KINDS, Job, JobConflict, JobRejected

log = logging.getLogger(__name__)

DEFAULT_HANDLERS: dict[str, str] = {
    "train": "segloop.jobs.tasks:run_train",
    "infer-batch": "segloop.jobs.tasks:run_infer_batch",
    "evaluate": "segloop.jobs.tasks:run_evaluate",
    "score": "segloop.jobs.tasks:run_score",
}

Validator = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass
class _Running:
    job: Job
    execution: Execution | None = None  # None while it is being launched
    cancel_asked: bool = False  # asked before `execution` existed
    last_flush: float = 0.0
    user_cancel: bool = False
    pending: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)


class JobRunner:
    """Runs background jobs for one data folder. Thread-safe; `start` before submitting."""

    def __init__(
        self,
        root: str | Path,
        *,
        bus: EventBus | None = None,
        mode: str = "process",
        max_running: int = 2,
        handlers: dict[str, str] | None = None,
        validator: Validator | None = None,
        child_threads: int | None = None,
        nice: int = 10,
        idle_kinds: frozenset[str] = frozenset({"train", "score"}),
        poll_interval: float = 0.5,
        progress_interval: float = 0.25,
        store: Any | None = None,
        db_url: str | None = None,
        executor: JobExecutor | None = None,
    ) -> None:
        if executor is None and mode not in ("process", "thread") and not is_ray_mode(mode):
            raise ValueError(f"mode must be 'process', 'thread', 'ray' or 'ray://HOST:PORT', not {mode!r}")
        self.root = Path(root)
        self.db_url = db_url  # a server database (PostgreSQL); None: $SEGLOOP_DB, else jobs.db
        self.db = JobDB(self.root, url=db_url)
        self.bus = bus or EventBus()
        self.mode = executor.name if executor is not None else mode
        # 0: this runner claims nothing (several servers on one server database: an API-only server
        # leaves the jobs to the others)
        self.max_running = max(0, int(max_running))
        self.handlers = dict(DEFAULT_HANDLERS if handlers is None else handlers)
        self.validator = validator
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.store = store
        # idle_kinds: these kinds' child processes run in the SCHED_IDLE class (Linux): long
        # computations that yield the CPU to request handling and interactive inference at once
        # (see `child_main`). Not the kinds that write labels or evaluations: a starved process
        # must not sit on the store's write lock.
        self.executor = executor or make_executor(
            mode,
            ExecutorConfig(self.root, db_url=db_url, store=store, threads=child_threads, nice=nice,
                           idle_kinds=frozenset(idle_kinds)),
        )
        self.identity = runner_identity()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._dispatcher: threading.Thread | None = None
        self.interrupted_on_start: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.max_running > 0:
            self.executor.start()  # Ray: connects (or starts a local one); raises when it cannot
        # a server database may be shared by several servers: their queued jobs are anyone's to run
        self.interrupted_on_start = self.db.recover(queued=self.db.sqlite)
        for job_id in self.interrupted_on_start:
            self._publish_state(self.db.get(job_id))
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="segloop-job-dispatcher", daemon=True)
        self._dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel running jobs, wait for them, and mark any that did not stop as interrupted."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
            self._wake.notify_all()
        for r in running:
            self._ask_cancel(r)
        deadline = time.monotonic() + timeout
        for r in running:
            if r.execution is not None:
                r.execution.join(max(0.0, deadline - time.monotonic()))
        for r in running:
            if r.execution is not None:
                try:
                    r.execution.kill()
                except Exception:
                    log.exception("could not stop job %s", r.job.id)
        for r in running:
            if self.db.transition(
                r.job.id,
                ACTIVE_STATES,
                state="interrupted",
                message="interrupted: the server stopped while this job was running",
                finished_at=utcnow(),
            ):
                self._publish_state(self.db.get(r.job.id))
        if self._dispatcher is not None:
            self._dispatcher.join(2)
        if self.max_running > 0:
            try:
                self.executor.stop()
            except Exception:
                log.exception("could not stop the job executor")
        self.db.dispose()

    # --- API ------------------------------------------------------------------------------------
    def kinds(self) -> list[str]:
        return [k for k in JOB_KINDS if k in self.handlers]

    def submit(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
        resource: str | None = None,
    ) -> Job:
        """Queue a job. Raises `JobRejected` (unknown kind, invalid parameters) or `JobConflict`."""
        if kind not in self.handlers:
            raise JobRejected(f"unknown job kind {kind!r}; available: {', '.join(self.kinds())}")
        params = dict(params or {})
        if self.validator is not None:
            params = self.validator(kind, params)
        if resource is None and kind == "train" and params.get("model"):
            resource = f"train:{params['model']}"
        job, held = self.db.create(kind, params, owner=owner, resource=resource)
        if held is not None:
            raise JobConflict(
                f"job {held.id} ({held.kind}, {held.state}) already holds {resource!r}; "
                "one such job at a time — wait for it or cancel it",
                held.id,
            )
        self._publish_state(job)
        with self._lock:
            self._wake.notify_all()
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.db.request_cancel(job_id)
        with self._lock:
            r = self._running.get(job_id)
            if r is not None:
                r.user_cancel = True
                self._ask_cancel(r)
            self._wake.notify_all()
        if job.state == "cancelled":
            self._publish_state(job)
        return job

    def get(self, job_id: str, with_metrics: bool = False) -> Job:
        return self.db.get(job_id, with_metrics=with_metrics)

    def list_jobs(self, **filters: Any) -> list[Job]:
        return self.db.list_jobs(**filters)

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.1) -> Job:
        """Block until the job is in a terminal state (or ``timeout`` passes); for scripts/tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.db.get(job_id)
            if not job.active or (deadline is not None and time.monotonic() > deadline):
                return job
            time.sleep(poll)

    # --- dispatcher -----------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
            try:
                self._check_cancel_flags()
                self._start_queued()
            except Exception:
                log.exception("job dispatcher iteration failed")
            with self._lock:
                if self._stopping:
                    return
                self._wake.wait(self.poll_interval)

    def _check_cancel_flags(self) -> None:
        with self._lock:
            ids = list(self._running)
        for job_id in self.db.cancel_requested(ids):
            with self._lock:
                r = self._running.get(job_id)
            if r is not None:
                r.user_cancel = True
                self._ask_cancel(r)

    @staticmethod
    def _ask_cancel(r: _Running) -> None:
        r.cancel_asked = True
        if r.execution is not None:
            r.execution.request_cancel()

    def _start_queued(self) -> None:
        with self._lock:
            free = self.max_running - len(self._running)
        if free <= 0:
            return
        for job in self.db.next_queued():
            if free <= 0:
                break
            if job.kind not in self.handlers:
                continue
            claimed = self.db.transition(
                job.id,
                {"queued"},
                state="running",
                runner=self.identity,
                started_at=utcnow(),
                message="starting",
            )
            if not claimed:
                continue
            free -= 1
            self._launch(self.db.get(job.id))

    def _launch(self, job: Job) -> None:
        handler = self.handlers[job.kind]
        self._publish_state(job)
        r = _Running(job)
        with self._lock:
            self._running[job.id] = r
        try:
            execution = self.executor.launch(
                job, handler, lambda msg: self._on_message(job.id, msg), lambda outcome: self._finish(job.id, outcome)
            )
        except Exception as exc:
            log.exception("could not start job %s", job.id)
            self._finish(job.id, ("failed", f"could not start the job ({self.executor.name}): {exc}", ""))
            return
        with self._lock:
            r.execution = execution
            asked = r.cancel_asked
        if asked:
            execution.request_cancel()

    # --- messages from handlers -----------------------------------------------------------------
    def _on_message(self, job_id: str, msg: Message) -> None:
        kind = msg[0]
        with self._lock:
            r = self._running.get(job_id)
        if kind == "progress":
            _, fraction, message, detail, force = msg
            update: dict[str, Any] = {"message": message or ""}
            if fraction is not None:
                update["progress"] = fraction
            if detail:
                update["detail"] = detail
            now = time.monotonic()
            if r is not None:
                r.pending.update(update)
                if not force and now - r.last_flush < self.progress_interval:
                    return
                update = dict(r.pending)
                r.pending.clear()
                r.last_flush = now
                self._flush_log(r)
            self.db.transition(job_id, {"running"}, **update)
            self.bus.publish(
                "job.progress",
                {
                    "job_id": job_id,
                    "kind": r.job.kind if r else None,
                    "progress": update.get("progress"),
                    "message": update.get("message", ""),
                    **(update.get("detail") or {}),
                },
            )
        elif kind == "metrics":
            self.db.add_metrics(job_id, msg[1])
            self.bus.publish("job.metrics", {"job_id": job_id, **msg[1]})
        elif kind == "log":
            if r is not None:
                r.log_lines.append(msg[1])
                if len(r.log_lines) >= 50:
                    self._flush_log(r)
            else:
                self.db.add_log(job_id, [msg[1]])
        elif kind == "event":
            self.bus.publish(msg[1], msg[2])

    def _flush_log(self, r: _Running) -> None:
        lines, r.log_lines = r.log_lines, []
        if lines:
            self.db.add_log(r.job.id, lines)

    def _finish(self, job_id: str, outcome: Message) -> None:
        with self._lock:
            r = self._running.pop(job_id, None)
            self._wake.notify_all()
        if r is not None:
            if r.pending:
                self.db.transition(job_id, {"running"}, **r.pending)
            self._flush_log(r)
        kind = outcome[0]
        now = utcnow()
        if kind == "done":
            result = outcome[1] if isinstance(outcome[1], dict) else {"value": outcome[1]}
            ok = self.db.transition(
                job_id, {"running"}, state="done", progress=1.0, message="done", result=result, finished_at=now
            )
        elif kind == "cancelled" and r is not None and not r.user_cancel:
            # stopped by the runner's shutdown, not by a user
            ok = self.db.transition(
                job_id,
                {"running"},
                state="interrupted",
                message="interrupted: the server stopped while this job was running",
                finished_at=now,
            )
        elif kind == "cancelled":
            ok = self.db.transition(job_id, {"running"}, state="cancelled", message=str(outcome[1]), finished_at=now)
        else:
            error = str(outcome[1])
            if len(outcome) > 2 and outcome[2]:
                self.db.add_log(job_id, str(outcome[2]).rstrip().splitlines())
            ok = self.db.transition(
                job_id, {"running"}, state="failed", message="failed", error=error, finished_at=now
            )
        if ok:
            self._publish_state(self.db.get(job_id))

    def _publish_state(self, job: Job) -> None:
        self.bus.publish("job.state", job.to_dict())
