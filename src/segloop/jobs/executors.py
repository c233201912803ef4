"""Where a job's handler executes: the one seam between the `JobRunner` and the machinery.

The runner owns everything about a job's life in the database (claiming it, persisting progress,
metrics and log lines, publishing events, the final state and the "interrupted" rule). An
executor only runs a claimed job's handler somewhere and reports back through two callbacks:

- ``report(message)`` for each ``("progress" | "metrics" | "log" | "event", ...)`` message the
  handler's `JobContext` produced, in order;
- ``finish(outcome)`` exactly once, with ``("done", result, seconds)``, ``("cancelled", text)``
  or ``("failed", error, traceback)``.

`launch` returns an `Execution`: the runner asks it to stop cooperatively (`request_cancel`:
the handler sees ``ctx.cancelled()``), waits for it (`join`), and kills what did not stop when
the server shuts down (`kill`).

Executors here: ``thread`` (a thread of the server's process; tests, tiny jobs) and ``process``
(a spawned child process per job, the default). ``ray`` / ``ray://HOST:PORT`` run jobs as Ray
tasks on a cluster (`segloop.jobs.ray_executor`, imported only when asked for).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from segloop.jobs.context import CancelFlag, Message, child_main, execute
from segloop.jobs.records import Job

log = logging.getLogger(__name__)

Report = Callable[[Message], None]

OUTCOMES = ("done", "failed", "cancelled")


class Execution(Protocol):
    """One launched job, as its runner sees it."""

    def request_cancel(self) -> None:
        """Ask the handler to stop (it sees ``ctx.cancelled()``); returns at once."""

    def cancel_requested(self) -> bool: ...

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the job to end and its outcome to be reported."""

    def kill(self) -> None:
        """Stop the job by force (the server is stopping and it did not stop when asked)."""


class JobExecutor(Protocol):
    """Runs claimed jobs' handlers (see the module's docstring)."""

    name: str

    def start(self) -> None:
        """Connect to or start what runs the jobs (before the first `launch`)."""

    def launch(self, job: Job, handler: str, report: Report, finish: Report) -> Execution:
        """Start ``handler`` (``module:function``) for ``job``; raises if it could not start
        (the runner then marks the job failed)."""
        ...

    def stop(self) -> None:
        """Release what `start` opened (after the runner stopped or killed every execution)."""


@dataclass
class ExecutorConfig:
    """What every executor needs to know about the data folder and the jobs' resources."""

    root: Path
    db_url: str | None = None  # the server database, or None: $SEGLOOP_DB / the folder's SQLite files
    store: Any | None = None  # the server's store, shared by the thread executor's handlers
    threads: int | None = None  # torch threads of a job (None: the executor's default)
    nice: int = 10
    idle_kinds: frozenset[str] = field(default_factory=frozenset)


def make_executor(mode: str, config: ExecutorConfig) -> JobExecutor:
    """The executor that ``mode`` names: ``process``, ``thread``, ``ray`` (a local Ray started by
    segloop) or ``ray://HOST:PORT`` (an existing Ray cluster). Raises ValueError otherwise, and
    `RayMissing` (an ImportError) for a Ray mode without Ray installed."""
    if mode == "process":
        return ProcessExecutor(config)
    if mode == "thread":
        return ThreadExecutor(config)
    if is_ray_mode(mode):
        from segloop.jobs.ray_executor import RayExecutor  # Ray itself is imported by its start()

        return RayExecutor(config, address=ray_address(mode))
    raise ValueError(f"job mode must be 'process', 'thread', 'ray' or 'ray://HOST:PORT', not {mode!r}")


def is_ray_mode(mode: str) -> bool:
    return mode == "ray" or mode.startswith("ray://")


def ray_address(mode: str) -> str | None:
    """``ray`` → None (start a local Ray); ``ray://HOST:PORT`` → that address (Ray Client)."""
    if mode == "ray":
        return None
    if not mode.startswith("ray://"):
        raise ValueError(f"not a Ray job mode: {mode!r}")
    hostport = mode.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a Ray cluster's address is ray://HOST:PORT (its Ray Client port, 10001 by default), not {mode!r}")
    return f"ray://{hostport}"


def set_flag(flag: CancelFlag) -> None:
    setter = getattr(flag, "set", None)
    if callable(setter):
        setter()


# --- a thread of this process ------------------------------------------------------------------
class _ThreadExecution:
    def __init__(self, thread: threading.Thread, cancel: threading.Event) -> None:
        self.thread = thread
        self.cancel = cancel

    def request_cancel(self) -> None:
        self.cancel.set()

    def cancel_requested(self) -> bool:
        return self.cancel.is_set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def kill(self) -> None:  # a thread cannot be killed; it was asked to stop
        pass


class ThreadExecutor:
    name = "thread"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def launch(self, job: Job, handler: str, report: Report, finish: Report) -> Execution:
        cancel = threading.Event()
        cfg = self.config

        def run() -> None:
            outcome: list[Message] = []

            def sink(msg: Message) -> None:
                if msg[0] in OUTCOMES:
                    outcome.append(msg)
                else:
                    report(msg)

            try:
                execute(job.id, job.kind, handler, job.params, cfg.root, sink, cancel, store=cfg.store,
                        db_url=cfg.db_url)
            finally:
                finish(outcome[-1] if outcome else ("failed", "the job ended without an outcome", ""))

        thread = threading.Thread(target=run, name=f"segloop-job-{job.id[:8]}", daemon=True)
        thread.start()
        return _ThreadExecution(thread, cancel)


# --- a spawned child process per job -----------------------------------------------------------
class _ProcessExecution:
    def __init__(self, process: Any, cancel: Any, monitor: threading.Thread) -> None:
        self.process = process
        self.cancel = cancel
        self.monitor = monitor

    def request_cancel(self) -> None:
        self.cancel.set()

    def cancel_requested(self) -> bool:
        return bool(self.cancel.is_set())

    def join(self, timeout: float) -> None:
        self.monitor.join(timeout)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
            if self.process.is_alive():
                self.process.kill()


class ProcessExecutor:
    """Each job in its own spawned child process at a lower CPU priority with a bounded number of
    torch threads (`child_main`); its messages travel over a multiprocessing queue to a monitor
    thread here. A crash of the job cannot take the server down."""

    name = "process"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        cpus = os.cpu_count() or 1
        # leave at least one core to the server; the child also runs at a lower priority
        self.threads = config.threads or max(1, cpus - 1)
        self._mp = mp.get_context("spawn")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def launch(self, job: Job, handler: str, report: Report, finish: Report) -> Execution:
        cfg = self.config
        q = self._mp.Queue()
        cancel = self._mp.Event()
        process = self._mp.Process(
            target=child_main,
            args=(job.id, job.kind, handler, job.params, str(cfg.root), q, cancel, self.threads, cfg.nice,
                  job.kind in cfg.idle_kinds, cfg.db_url),
            name=f"segloop-job-{job.id[:8]}",
        )
        monitor = threading.Thread(
            target=_monitor_process, args=(q, process, cancel, report, finish), name=f"segloop-monitor-{job.id[:8]}",
            daemon=True,
        )
        try:
            process.start()
        except Exception:
            with contextlib.suppress(Exception):
                q.close()
            raise
        monitor.start()
        return _ProcessExecution(process, cancel, monitor)


def _monitor_process(q: Any, process: Any, cancel: Any, report: Report, finish: Report) -> None:
    outcome: Message | None = None
    try:
        while outcome is None:
            try:
                msg = q.get(timeout=0.5)
            except queue_mod.Empty:
                if not process.is_alive():
                    # drain what the child wrote just before exiting
                    try:
                        while True:
                            msg = q.get(timeout=0.2)
                            if msg[0] in OUTCOMES:
                                outcome = msg
                                break
                            report(msg)
                    except queue_mod.Empty:
                        pass
                    if outcome is None:
                        if cancel.is_set():
                            outcome = ("cancelled", "cancelled (the job process was stopped)")
                        else:
                            outcome = ("failed", f"the job process ended unexpectedly (exit code {process.exitcode})", "")
                continue
            if msg[0] in OUTCOMES:
                outcome = msg
            else:
                report(msg)
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(2)
    except Exception as exc:  # never leave a job "running" because the monitor broke
        log.exception("job monitor failed")
        outcome = ("failed", f"job monitor failed: {exc}", "")
    finally:
        finish(outcome or ("failed", "the job ended without an outcome", ""))
        with contextlib.suppress(Exception):
            q.close()
