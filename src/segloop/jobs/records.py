"""Job records and the errors of the job runner (plain data, JSON-friendly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

JobKind = Literal["train", "infer-batch", "evaluate", "score"]
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]

JOB_KINDS: tuple[str, ...] = ("train", "infer-batch", "evaluate", "score")
JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})


@dataclass(frozen=True)
class Job:
    """One background job as persisted in the jobs database.

    ``resource`` is the exclusivity key (``train:<model>``): at most one active job holds it.
    ``progress`` is a fraction in [0, 1]; ``detail`` the latest structured progress report
    (for training: epoch, epochs, step, steps, loss, val_dice, eta_seconds).
    """

    id: str
    kind: str
    params: dict[str, Any]
    state: str
    progress: float
    message: str
    detail: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    owner: str | None
    resource: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool = False
    metrics: list[dict[str, Any]] = field(default_factory=list)
    runner: str | None = None  # host:pid of the process running it (with several servers: which one)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self, with_metrics: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "detail": self.detail,
            "result": self.result,
            "error": self.error,
            "owner": self.owner,
            "resource": self.resource,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "cancel_requested": self.cancel_requested,
            "runner": self.runner,
        }
        if with_metrics:
            d["metrics"] = self.metrics
        return d


class JobError(Exception):
    """Base class of job-runner errors."""


class JobNotFound(JobError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobConflict(JobError):
    """An active job already holds the resource (e.g. a model being trained): HTTP 409."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobRejected(JobError, ValueError):
    """The job's parameters are invalid or its kind is not available here: HTTP 422."""


class JobCancelled(JobError):
    """Raised inside a handler (by `JobContext.check_cancelled`) when cancel was requested."""
