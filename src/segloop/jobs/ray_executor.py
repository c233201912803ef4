"""Jobs as Ray tasks: ``segloop serve --jobs ray`` (a local Ray started by segloop) or
``--jobs ray://HOST:PORT`` (an existing cluster, through its Ray Client port).

Ray is an optional extra (``pip install 'segloop[ray]'``); this module imports it only when an
executor starts, so the default install never needs it.

How a job runs (the runner claims it, persists what it reports and records its outcome exactly as
for local jobs, `segloop.jobs.executors`):

- One Ray task per job (`run_job_on_worker`), in a fresh worker process (``max_calls=1``: torch's
  memory goes back when the job ends) and never retried (``max_retries=0``: a training killed
  half-way must not silently start again). It asks for ``num_gpus=1`` when the cluster has GPUs,
  else ``threads`` CPUs (``--job-threads``, default 1), and runs the handler with that many torch
  threads. The task gets the data folder's path and the database URL: **every node must see the
  data folder at the same path** (a shared file system: images, labels and checkpoints are files)
  and reach the database (with several nodes, a server database: ``--db postgresql://...``;
  SQLite files on a network file system are not safe for concurrent writers), and run the same
  segloop and Python versions as the server.
- Progress, metrics, log lines and events travel back through a small mailbox actor (one per
  server, ``num_cpus=0``) that a thread here empties four times a second; streaming generators
  would be simpler but Ray Client does not support them. The task's outcome is its return value.
- Cancel: the task polls the job's ``cancel_requested`` flag in the database every 0.5 s (so a
  cancel from any server reaches it) and the handler stops cooperatively, as in a local child
  process; a task still waiting for a worker is removed with ``ray.cancel``; one that has not
  stopped ``cancel_grace`` seconds after the request is killed (``ray.cancel(force=True)``).
- **Training on several workers** (``TrainConfig.workers`` N > 1): the job's task is rank 0; it
  starts N-1 `RankActor`s (one per rank, the same resources as a job: a GPU each where the cluster
  has GPUs, else ``threads`` CPUs), waits for them (cancellable; a cluster too small for N ranks
  rejects the job at once), and they form a torch.distributed process group with rank 0
  (`segloop.ml.distributed`: gloo on CPU, NCCL on GPUs; DistributedDataParallel). Only rank 0
  reports, validates and registers the version. A cancel reaches the other ranks through the
  per-step agreement; a rank whose worker dies breaks rank 0's next collective and the job fails
  naming that rank; the actors belong to the job's task, so they end with it.
- A worker (or node) that dies mid-job fails the job ("the Ray worker running the job died");
  the server that dies takes its tasks with it (Ray kills an owner's tasks) and, restarted,
  marks the job interrupted. A training records its model version only at its very end, so the
  model's current version is untouched either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from segloop.jobs.context import Message
from segloop.jobs.executors import OUTCOMES, Execution, ExecutorConfig, Report
from segloop.jobs.records import Job

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'segloop[ray]'"
CONNECT_ATTEMPTS = 3  # ray.init tries against a cluster whose client proxy failed to start a connection


class RayMissing(ImportError):
    """Ray is not installed (jobs on Ray need the ``ray`` extra)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayMissing(f"jobs on Ray (--jobs ray, --jobs ray://HOST:PORT) need Ray: {INSTALL_HINT}") from exc
    return ray


# --- on the cluster ----------------------------------------------------------------------------
def _lower_priority(nice: int, idle_class: bool) -> None:
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if idle_class and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class RankActor:
    """One rank (> 0) of a distributed job, in a Ray worker process of its own."""

    def __init__(self, threads: int, nice: int = 0, idle_class: bool = False) -> None:
        _lower_priority(nice, idle_class)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["SEGLOOP_JOB_THREADS"] = str(threads)
        with contextlib.suppress(Exception):
            import torch

            torch.set_num_threads(threads)

    def where(self) -> dict[str, Any]:
        import socket

        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def run(self, target: str, kwargs: dict[str, Any]) -> Any:
        from segloop.jobs.context import resolve_handler

        fn: Any = resolve_handler(target)
        return fn(**kwargs)


class RayPeers:
    """Ranks 1..N-1 of a job as `RankActor`s, started from the job's task (its rank 0)."""

    def __init__(self, ray: Any, world: int, target: str, kwargs: dict[str, Any], ctx: Any, threads: int,
                 resources: dict[str, Any], nice: int = 0, idle_class: bool = False, wait_poll: float = 0.5) -> None:
        self.ray = ray
        self.world = world
        self.target = target
        self.kwargs = kwargs
        self.host = ray.util.get_node_ip_address()
        self.actors: list[Any] = []
        self.runs: list[Any] = []
        self.where: list[dict[str, Any]] = []
        need = {k: float(v) * world for k, v in resources.items() if k in ("num_cpus", "num_gpus")}
        have = ray.cluster_resources()
        short = [f"{need[k]:g} {name} (the cluster has {float(have.get(name, 0) or 0):g})"
                 for k, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")) if k in need
                 if float(have.get(name, 0) or 0) < need[k]]
        if short:
            from segloop.jobs.records import JobRejected

            raise JobRejected(f"a training on {world} workers needs {' and '.join(short)}: use fewer workers")
        cls = ray.remote(max_restarts=0, max_task_retries=0)(RankActor)
        try:
            self.actors = [cls.options(name=None, **resources).remote(threads, nice, idle_class) for _ in range(1, world)]
            refs = [a.where.remote() for a in self.actors]
            ctx.progress(0.0, f"waiting for {world - 1} more Ray worker(s) for ranks 1..{world - 1}", force=True)
            pending = refs
            while pending:
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=wait_poll)
                ctx.check_cancelled()
            self.where = ray.get(refs, timeout=60)
        except BaseException:
            self.close()
            raise
        for rank, w in enumerate(self.where, start=1):
            ctx.log(f"rank {rank} of {world} on Ray node {w['host']} {w['node'][:12]}, worker pid {w['pid']}")

    def launch(self, port: int) -> None:
        self.runs = [a.run.remote(self.target, {**self.kwargs, "rank": rank, "world": self.world, "host": self.host,
                                                "port": port})
                     for rank, a in enumerate(self.actors, start=1)]

    def _describe(self, rank: int, exc: BaseException) -> str:
        w = self.where[rank - 1] if rank - 1 < len(self.where) else {}
        place = f"Ray node {w.get('host', '?')}, worker pid {w.get('pid', '?')}"
        name = type(exc).__name__
        if "Died" in name or "Unavailable" in name:
            return f"rank {rank} of {self.world} died ({place}: {name})"
        cause = getattr(exc, "cause", None) or exc
        return f"rank {rank} of {self.world} failed ({place}): {type(cause).__name__}: {_first_line(cause)}"

    def failure(self, wait: float) -> str | None:
        if not self.runs:
            return None
        end = time.monotonic() + wait
        while True:
            ready, _ = self.ray.wait(self.runs, num_returns=len(self.runs), timeout=0.2)
            for rank, ref in enumerate(self.runs, start=1):
                if ref in ready:
                    try:
                        self.ray.get(ref, timeout=10)
                    except Exception as exc:
                        return self._describe(rank, exc)
            if time.monotonic() >= end:
                return None

    def finish(self, timeout: float) -> list[Any]:
        results = []
        for rank, ref in enumerate(self.runs, start=1):
            try:
                results.append(self.ray.get(ref, timeout=timeout))
            except Exception as exc:
                raise RuntimeError(self._describe(rank, exc)) from exc
        return results

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        self.actors = []


class Mailbox:
    """The actor that carries jobs' messages from their tasks to the server (one per server)."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[Message]] = {}

    def put(self, job_id: str, messages: list[Message]) -> None:
        self.boxes.setdefault(job_id, []).extend(messages)

    def take(self) -> dict[str, list[Message]]:
        boxes, self.boxes = self.boxes, {}
        return boxes


def run_job_on_worker(
    job_id: str,
    kind: str,
    handler_path: str,
    params: dict[str, Any],
    root: str,
    db_url: str | None,
    mailbox: Any,
    threads: int,
    nice: int = 0,
    idle_class: bool = False,
    send_interval: float = 0.2,
    cancel_poll: float = 0.5,
    rank_resources: dict[str, Any] | None = None,
) -> Message:
    """The body of a job's Ray task: runs the handler and returns its outcome message."""
    import socket

    import ray

    from segloop.jobs.context import execute

    _lower_priority(nice, idle_class)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["SEGLOOP_JOB_THREADS"] = str(threads)
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(threads)

    cancel = threading.Event()
    done = threading.Event()
    lock = threading.Lock()
    outbox: list[Message] = []
    outcome: list[Message] = []

    def send() -> None:
        with lock:
            batch = outbox[:]
            outbox.clear()
        if batch:
            try:
                ray.get(mailbox.put.remote(job_id, batch), timeout=30)
            except Exception as exc:  # the job goes on; its outcome is the task's return value
                print(f"segloop: could not report {len(batch)} message(s) of job {job_id}: {exc}", flush=True)

    def sender() -> None:
        while not done.wait(send_interval):
            send()

    def cancel_watch() -> None:
        from segloop.jobs.db import JobDB

        db = JobDB(Path(root), url=db_url)
        try:
            while not done.wait(cancel_poll):
                try:
                    if db.cancel_requested([job_id]):
                        cancel.set()
                        return
                except Exception as exc:
                    print(f"segloop: could not read job {job_id}'s cancel flag: {exc}", flush=True)
        finally:
            db.dispose()

    def sink(msg: Message) -> None:
        if msg[0] in OUTCOMES:
            outcome.append(msg)
        else:
            with lock:
                outbox.append(msg)

    helpers = [threading.Thread(target=sender, daemon=True), threading.Thread(target=cancel_watch, daemon=True)]
    for t in helpers:
        t.start()
    node = ray.get_runtime_context().get_node_id()
    where = f"Ray node {socket.gethostname()} {node[:12]}, worker pid {os.getpid()}"
    sink(("progress", 0.0, f"running on {where}", {"ray_node": node, "ray_pid": os.getpid()}, True))
    sink(("log", f"running on {where}"))
    def peers(world: int, target: str, kwargs: dict[str, Any], ctx: Any) -> RayPeers:
        return RayPeers(ray, world, target, kwargs, ctx, threads, rank_resources or {"num_cpus": threads}, nice,
                        idle_class)

    try:
        execute(job_id, kind, handler_path, params, Path(root), sink, cancel, capture_logs=True, db_url=db_url,
                peers=peers)
    finally:
        done.set()
        for t in helpers:
            t.join(5)
        send()  # the last messages are in the mailbox before the outcome reaches the server
    return outcome[-1] if outcome else ("failed", "the job ended without an outcome", "")


# --- on the server ------------------------------------------------------------------------------
class _RayExecution:
    def __init__(self, executor: RayExecutor, job: Job, ref: Any, report: Report, finish: Report) -> None:
        self.executor = executor
        self.job = job
        self.ref = ref
        self.report = report
        self.finish = finish
        self.started = False  # a message came from the task: it has a worker
        self.cancel_at: float | None = None
        self.pending_cancelled = False
        self.forced = False
        self.monitor = threading.Thread(target=self._watch, name=f"segloop-ray-{job.id[:8]}", daemon=True)

    # Execution
    def request_cancel(self) -> None:
        if self.cancel_at is None:
            self.cancel_at = time.monotonic()

    def cancel_requested(self) -> bool:
        return self.cancel_at is not None

    def join(self, timeout: float) -> None:
        self.monitor.join(timeout)

    def kill(self) -> None:
        if self.monitor.is_alive():
            self._force()

    def _force(self) -> None:
        if not self.forced:
            self.forced = True
            with contextlib.suppress(Exception):
                self.executor.ray.cancel(self.ref, force=True)

    def _watch(self) -> None:
        ray = self.executor.ray
        outcome: Message
        try:
            while True:
                ready, _ = ray.wait([self.ref], timeout=0.5)
                if ready:
                    break
                if self.cancel_at is not None:
                    if not self.started and not self.pending_cancelled:
                        self.pending_cancelled = True  # still waiting for a worker: take it off the queue
                        with contextlib.suppress(Exception):
                            ray.cancel(self.ref)
                    elif time.monotonic() - self.cancel_at > self.executor.cancel_grace:
                        self._force()
            try:
                result = ray.get(self.ref, timeout=60)
                outcome = tuple(result) if isinstance(result, list | tuple) and result and result[0] in OUTCOMES \
                    else ("failed", f"the Ray task returned {result!r}", "")
            except Exception as exc:
                name = type(exc).__name__
                if self.cancel_at is not None:
                    outcome = ("cancelled", "cancelled (the Ray task was stopped)")
                elif "Cancel" in name:
                    outcome = ("cancelled", "cancelled (the Ray task was cancelled)")
                else:
                    outcome = ("failed", f"the Ray worker running the job died ({name}: {_first_line(exc)})", "")
        except Exception as exc:  # never leave a job "running" because the monitor broke
            log.exception("Ray job monitor failed")
            outcome = ("failed", f"job monitor failed: {exc}", "")
        try:
            self.executor.pump()  # what the task sent before it ended, before its outcome
        except Exception as exc:
            log.warning("could not read job %s's last messages from the Ray mailbox: %s", self.job.id, exc)
        finally:
            self.executor.forget(self.job.id)
            self.finish(outcome)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


class RayExecutor:
    """Runs jobs as Ray tasks (see the module's docstring)."""

    name = "ray"

    def __init__(
        self,
        config: ExecutorConfig,
        address: str | None = None,
        *,
        cancel_grace: float = 15.0,
        pump_interval: float = 0.25,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.address = address  # None: a local Ray started here; else ray://HOST:PORT
        self.threads = max(1, int(config.threads or 1))
        self.cancel_grace = cancel_grace
        self.pump_interval = pump_interval
        self.init_kwargs = dict(init_kwargs or {})
        self.ray: Any = None
        self._owns_ray = False
        self._mailbox: Any = None
        self._task: Any = None
        self._jobs: dict[str, _RayExecution] = {}
        self._lock = threading.Lock()
        self._pump_lock = threading.Lock()
        self._stop = threading.Event()
        self._pumper: threading.Thread | None = None
        self._db_url: str | None = None

    @property
    def where(self) -> str:
        return self.address or "a local Ray"

    def start(self) -> None:
        ray = import_ray()
        self.ray = ray
        from segloop.store.database import configured_url

        # the workers get the resolved URL: they need not share the server's environment
        self._db_url = configured_url(self.config.db_url)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address is None:
                kwargs.update(include_dashboard=False)
            kwargs.update(self.init_kwargs)
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    ray.init(address=self.address, **kwargs)
                    break
                except ConnectionAbortedError as exc:
                    # the head's client proxy could not start the per-connection server (seen in
                    # CI: psutil met that server as a zombie); a new connection gets a new one
                    if attempt + 1 == CONNECT_ATTEMPTS:
                        raise RuntimeError(f"could not connect to Ray at {self.where}: {exc}") from exc
                    log.warning("connecting to Ray at %s failed (%s); trying again", self.where,
                                str(exc).splitlines()[-1] if str(exc) else exc)
                    if ray.is_initialized():
                        ray.shutdown()
                    time.sleep(2.0 * (attempt + 1))
                except Exception as exc:
                    raise RuntimeError(f"could not connect to Ray at {self.where}: {exc}") from exc
            self._owns_ray = True
        self._mailbox = ray.remote(num_cpus=0, max_restarts=0)(Mailbox).remote()
        self._task = ray.remote(max_retries=0, retry_exceptions=False, max_calls=1)(run_job_on_worker)
        self._stop.clear()
        self._pumper = threading.Thread(target=self._pump_loop, name="segloop-ray-mailbox", daemon=True)
        self._pumper.start()
        log.info("jobs run on Ray (%s): %s", self.where, ray.cluster_resources())

    def stop(self) -> None:
        self._stop.set()
        if self._pumper is not None:
            self._pumper.join(5)
        if self.ray is None:
            return
        if self._mailbox is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(self._mailbox)
            self._mailbox = None
        if self._owns_ray:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            self._owns_ray = False

    def resources(self) -> dict[str, Any]:
        """The task options of a job: a GPU where the cluster has GPUs, else CPUs."""
        gpus = float(self.ray.cluster_resources().get("GPU", 0) or 0)
        if gpus >= 1:
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": self.threads}

    def launch(self, job: Job, handler: str, report: Report, finish: Report) -> Execution:
        if self.ray is None or self._task is None:
            raise RuntimeError("the Ray executor is not started")
        local = self.address is None  # on the server's machine: yield the CPU as local jobs do
        resources = self.resources()
        ref = self._task.options(name=f"segloop-{job.kind}-{job.id[:8]}", **resources).remote(
            job.id, job.kind, handler, job.params, str(self.config.root), self._db_url, self._mailbox, self.threads,
            self.config.nice if local else 0, local and job.kind in self.config.idle_kinds,
            rank_resources=resources,
        )
        execution = _RayExecution(self, job, ref, report, finish)
        with self._lock:
            self._jobs[job.id] = execution
        report(("progress", 0.0, f"waiting for a Ray worker ({self.where})", {}, True))
        execution.monitor.start()
        return execution

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def pump(self) -> None:
        """Deliver the mailbox's messages to their jobs' runners, in order."""
        if self._mailbox is None:
            return
        with self._pump_lock:
            boxes = self.ray.get(self._mailbox.take.remote(), timeout=30)
            for job_id, messages in boxes.items():
                with self._lock:
                    execution = self._jobs.get(job_id)
                if execution is None:
                    continue
                execution.started = True
                for msg in messages:
                    try:
                        execution.report(msg)
                    except Exception:
                        log.exception("could not record a message of job %s", job_id)

    def _pump_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.pump_interval):
            with self._lock:
                idle = not self._jobs
            if idle:
                continue
            try:
                self.pump()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 10, 100):
                    log.warning("could not read the Ray jobs' mailbox (%s); their outcomes still arrive", exc)
