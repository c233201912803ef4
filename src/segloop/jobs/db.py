"""Persistence of jobs, their metrics stream and log, and the evaluation history.

The tables live in ``jobs.db`` beside the store's ``segloop.db`` in the data folder: a separate
SQLite file keeps the job runner's frequent small writes (progress, log lines) from contending
with the store's writes, and keeps the two schemas independent. Any process that opens the data
folder (a server, the CLI) sees the same jobs. With a server database (``--db postgresql://...``,
`segloop.store.database`) they live there with the store's tables instead, so that every server
on that database sees, and can cancel, every job. The schema's migrations: `segloop.store.migrations`.

Also here: the tables several servers on one database share (``shared_events``, ``servers``,
``server_sessions``; `segloop.jobs.relay`).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from segloop.jobs.records import ACTIVE_STATES, Job, JobNotFound

JOBS_DB = "jobs.db"

metadata = sa.MetaData()

jobs_table = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("resource", sa.String(256), nullable=True, index=True),
    sa.Column("runner", sa.String(256), nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=True),
    sa.Column("finished_at", sa.DateTime, nullable=True),
)

metrics_table = sa.Table(
    "job_metrics",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("time", sa.DateTime, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

log_table = sa.Table(
    "job_log",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("time", sa.DateTime, nullable=False),
    sa.Column("line", sa.Text, nullable=False),
)

evaluations_table = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "model" | "revision" | "model-dataset"
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("discrepancy", sa.Text, nullable=True),  # path of the discrepancy map, if any
    sa.Column("author", sa.String(128), nullable=True),
    sa.Column("job_id", sa.String(32), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
)


shared_events_table = sa.Table(
    "shared_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime, nullable=False, index=True),
    sa.Column("origin", sa.String(64), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

servers_table = sa.Table(
    "servers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("seen_at", sa.DateTime, nullable=False),
)

server_sessions_table = sa.Table(
    "server_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("server", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _iso(dt: datetime | None) -> str | None:
    aware = _aware(dt)
    return aware.isoformat() if aware is not None else None


def runner_identity() -> str:
    """``host:pid`` of this process: which runner executes a job (for restart recovery)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _runner_alive(runner: str | None) -> bool:
    if not runner or ":" not in runner:
        return False
    host, _, pid_text = runner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's runner: we cannot tell, leave its jobs alone
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # a previous life of this very process id cannot still run here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobDB:
    """Thread-safe access to the jobs database of one data folder (short transactions)."""

    def __init__(self, root: str | Path, url: str | None = None) -> None:
        from segloop.store.database import resolve
        from segloop.store.migrations import ensure
        from segloop.store.sql import make_engine

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = resolve(self.root, "jobs", url)
        self.sqlite = self.url.startswith("sqlite")
        if self.sqlite:
            self.path: Path | None = self.root / JOBS_DB
            self.engine: Engine = sa.create_engine(
                f"sqlite:///{self.path}",
                connect_args={"check_same_thread": False, "timeout": 30},
            )
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)
            # reads go through a second engine with the driver's default (deferred) transactions so
            # that they never wait for the write lock (WAL readers do not block writers, nor vice versa)
            self.reader: Engine = sa.create_engine(
                f"sqlite:///{self.path}",
                connect_args={"check_same_thread": False, "timeout": 30},
            )
        else:  # a server database: row locks and MVCC, one pool for reads and writes
            self.path = None
            self.engine = make_engine(self.url)
            self.reader = self.engine
        ensure(self.engine, "jobs", metadata)

    @staticmethod
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @staticmethod
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at the start: the check-then-insert of `create` is atomic
        # across processes sharing the file.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def dispose(self) -> None:
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    # --- jobs ---------------------------------------------------------------------------------
    def create(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        owner: str | None = None,
        resource: str | None = None,
    ) -> tuple[Job, Job | None]:
        """Insert a queued job. When ``resource`` is held by an active job, insert nothing and
        return ``(that job, that job)`` instead: the caller turns it into a conflict."""
        with self.engine.begin() as conn:
            if resource is not None and not self.sqlite:
                # SQLite's BEGIN IMMEDIATE serialises this check-then-insert; a server database
                # needs a lock of its own (held to the commit), per resource
                key = zlib.crc32(f"segloop-job-resource:{resource}".encode())
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            if resource is not None:
                row = conn.execute(
                    sa.select(jobs_table)
                    .where(jobs_table.c.resource == resource, jobs_table.c.state.in_(ACTIVE_STATES))
                    .limit(1)
                ).first()
                if row is not None:
                    held = self._job(row._mapping)
                    return held, held
            job_id = uuid.uuid4().hex
            conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    kind=kind,
                    params=json.dumps(params),
                    state="queued",
                    progress=0.0,
                    message="queued",
                    detail="{}",
                    owner=owner,
                    resource=resource,
                    cancel_requested=False,
                    created_at=utcnow(),
                )
            )
        return self.get(job_id), None

    def get(self, job_id: str, with_metrics: bool = False) -> Job:
        with self.reader.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).first()
            if row is None:
                raise JobNotFound(f"job {job_id!r} does not exist")
            metrics: list[dict[str, Any]] = []
            if with_metrics:
                metrics = [
                    json.loads(r.data)
                    for r in conn.execute(
                        sa.select(metrics_table.c.data)
                        .where(metrics_table.c.job_id == job_id)
                        .order_by(metrics_table.c.seq)
                    )
                ]
        return self._job(row._mapping, metrics)

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        resource: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
    ) -> list[Job]:
        """Jobs, newest first, optionally only those in ``state``, of ``kind`` or holding ``resource``."""
        q = sa.select(jobs_table).order_by(jobs_table.c.created_at.desc(), jobs_table.c.id)
        if state is not None:
            q = q.where(jobs_table.c.state == state)
        if kind is not None:
            q = q.where(jobs_table.c.kind == kind)
        if resource is not None:
            q = q.where(jobs_table.c.resource == resource)
        q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.reader.connect() as conn:
            return [self._job(r._mapping) for r in conn.execute(q)]

    def count(self, *, state: str | None = None, kind: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(jobs_table)
        if state is not None:
            q = q.where(jobs_table.c.state == state)
        if kind is not None:
            q = q.where(jobs_table.c.kind == kind)
        with self.reader.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def update(self, job_id: str, **values: Any) -> None:
        for key in ("params", "detail", "result"):
            if key in values and values[key] is not None and not isinstance(values[key], str):
                values[key] = json.dumps(values[key])
        with self.engine.begin() as conn:
            conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))

    def transition(self, job_id: str, from_states: set[str] | frozenset[str], **values: Any) -> bool:
        """Update only when the job is in one of ``from_states`` (no lost terminal states)."""
        for key in ("detail", "result"):
            if key in values and values[key] is not None and not isinstance(values[key], str):
                values[key] = json.dumps(values[key])
        with self.engine.begin() as conn:
            res = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(from_states))
                .values(**values)
            )
            return bool(res.rowcount)

    def request_cancel(self, job_id: str) -> Job:
        """Flag the job for cancellation; a queued job is cancelled at once."""
        self.get(job_id)
        with self.engine.begin() as conn:
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(ACTIVE_STATES))
                .values(cancel_requested=True)
            )
            conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                .values(state="cancelled", message="cancelled before it started", finished_at=utcnow())
            )
        return self.get(job_id)

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` (jobs this runner runs) must stop: a cancel was asked for, or the
        job is no longer ``running`` in the database (another server of a shared database took
        this one for dead and marked its job interrupted: the work must not go on unseen)."""
        if not job_ids:
            return set()
        with self.reader.connect() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.id).where(
                    jobs_table.c.id.in_(job_ids),
                    sa.or_(jobs_table.c.cancel_requested.is_(True), jobs_table.c.state != "running"),
                )
            )
            return {r.id for r in rows}

    def next_queued(self) -> list[Job]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                sa.select(jobs_table).where(jobs_table.c.state == "queued").order_by(jobs_table.c.created_at)
            )
            return [self._job(r._mapping) for r in rows]

    def recover(self, queued: bool = True) -> list[str]:
        """Mark jobs whose runner is gone as interrupted (queued ones too: nobody will run them,
        unless ``queued`` is False: with several servers on one database any of them claims a
        queued job, so a server that starts leaves them be).

        Returns the ids of the jobs so marked."""
        marked: list[str] = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.id, jobs_table.c.state, jobs_table.c.runner).where(
                    jobs_table.c.state.in_(ACTIVE_STATES)
                )
            ).all()
            for r in rows:
                if r.state == "running" and _runner_alive(r.runner):
                    continue
                if r.state == "queued" and (not queued or (r.runner is not None and _runner_alive(r.runner))):
                    continue
                conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == r.id)
                    .values(
                        state="interrupted",
                        message=(
                            "interrupted: the server stopped while this job was running"
                            if r.state == "running"
                            else "interrupted: the server stopped before this job started"
                        ),
                        finished_at=utcnow(),
                    )
                )
                marked.append(r.id)
        return marked

    def add_metrics(self, job_id: str, data: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            seq = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(metrics_table.c.seq), 0)).where(
                    metrics_table.c.job_id == job_id
                )
            ).scalar_one()
            conn.execute(metrics_table.insert().values(job_id=job_id, seq=seq + 1, time=utcnow(), data=json.dumps(data)))

    def add_log(self, job_id: str, lines: list[str]) -> None:
        if not lines:
            return
        with self.engine.begin() as conn:
            seq = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(log_table.c.seq), 0)).where(log_table.c.job_id == job_id)
            ).scalar_one()
            now = utcnow()
            conn.execute(
                log_table.insert(),
                [{"job_id": job_id, "seq": seq + i + 1, "time": now, "line": line} for i, line in enumerate(lines)],
            )

    def log(self, job_id: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        self.get(job_id)
        q = (
            sa.select(log_table.c.seq, log_table.c.time, log_table.c.line)
            .where(log_table.c.job_id == job_id, log_table.c.seq > offset)
            .order_by(log_table.c.seq)
        )
        if limit is not None:
            q = q.limit(limit)
        with self.reader.connect() as conn:
            return [
                {"seq": r.seq, "time": _iso(r.time), "line": r.line}
                for r in conn.execute(q)
            ]

    # --- evaluation history ---------------------------------------------------------------------
    def add_evaluation(
        self,
        kind: str,
        params: dict[str, Any],
        result: dict[str, Any],
        *,
        discrepancy: str | None = None,
        author: str | None = None,
        job_id: str | None = None,
        evaluation_id: str | None = None,
    ) -> dict[str, Any]:
        eid = evaluation_id or uuid.uuid4().hex
        with self.engine.begin() as conn:
            conn.execute(
                evaluations_table.insert().values(
                    id=eid,
                    kind=kind,
                    params=json.dumps(params),
                    result=json.dumps(result),
                    discrepancy=discrepancy,
                    author=author,
                    job_id=job_id,
                    created_at=utcnow(),
                )
            )
        return self.get_evaluation(eid)

    def get_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        with self.reader.connect() as conn:
            row = conn.execute(sa.select(evaluations_table).where(evaluations_table.c.id == evaluation_id)).first()
        if row is None:
            raise JobNotFound(f"evaluation {evaluation_id!r} does not exist")
        return self._evaluation(row._mapping)

    def list_evaluations(self, *, offset: int = 0, limit: int | None = 100, **filters: Any) -> list[dict[str, Any]]:
        q = sa.select(evaluations_table).order_by(evaluations_table.c.created_at.desc(), evaluations_table.c.id)
        if filters.get("kind"):
            q = q.where(evaluations_table.c.kind == filters["kind"])
        q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.reader.connect() as conn:
            items = [self._evaluation(r._mapping) for r in conn.execute(q)]
        # filters on params (image id, model) are applied here: the history is small
        for key in ("image_id", "model"):
            if filters.get(key):
                items = [e for e in items if e["params"].get(key) == filters[key]]
        return items

    # --- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _evaluation(m: Any) -> dict[str, Any]:
        return {
            "id": m["id"],
            "kind": m["kind"],
            "params": json.loads(m["params"]),
            "result": json.loads(m["result"]),
            "has_discrepancy": m["discrepancy"] is not None,
            "discrepancy_path": m["discrepancy"],
            "author": m["author"],
            "job_id": m["job_id"],
            "created_at": _iso(m["created_at"]),
        }

    @staticmethod
    def _job(m: Any, metrics: list[dict[str, Any]] | None = None) -> Job:
        return Job(
            id=m["id"],
            kind=m["kind"],
            params=json.loads(m["params"]),
            state=m["state"],
            progress=float(m["progress"] or 0.0),
            message=m["message"] or "",
            detail=json.loads(m["detail"] or "{}"),
            result=json.loads(m["result"]) if m["result"] else None,
            error=m["error"],
            owner=m["owner"],
            resource=m["resource"],
            created_at=_aware(m["created_at"]) or utcnow(),
            started_at=_aware(m["started_at"]),
            finished_at=_aware(m["finished_at"]),
            cancel_requested=bool(m["cancel_requested"]),
            metrics=metrics or [],
            runner=m["runner"],
        )
