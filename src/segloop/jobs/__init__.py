"""Layer 4, jobs: background jobs (train, batch inference, evaluate, score) with progress, a
metrics stream, a log and cancel; persisted in the data folder's ``jobs.db``. No HTTP here."""

from segloop.jobs.context import JobContext
from segloop.jobs.db import JobDB
from segloop.jobs.events import EventBus
from segloop.jobs.records import (
    JOB_KINDS,
    JOB_STATES,
    Job,
    JobCancelled,
    JobConflict,
    JobError,
    JobNotFound,
    JobRejected,
)
from segloop.jobs.runner import DEFAULT_HANDLERS, JobRunner

__all__ = [
    "DEFAULT_HANDLERS",
    "JOB_KINDS",
    "JOB_STATES",
    "EventBus",
    "Job",
    "JobCancelled",
    "JobConflict",
    "JobContext",
    "JobDB",
    "JobError",
    "JobNotFound",
    "JobRejected",
    "JobRunner",
]
