"""Several servers on one server database behave as one: shared live events, a registry of the
servers that are up, and the jobs of a server that died.

`ClusterLink` runs one thread per server process. Every ``poll`` seconds it

- writes the events this server published on its `EventBus` since the last round into the
  ``shared_events`` change table (one short transaction per round, off the publishing threads),
- reads the rows the other servers wrote since the last one it saw and publishes them on this
  server's bus, so a browser connected to either server sees every job's progress and every saved
  revision (polling a table works on PostgreSQL and SQLite alike; LISTEN/NOTIFY would save the
  idle queries but needs a dedicated connection per server),
- stamps its row in ``servers`` (``seen_at``; id = the job runner's ``host:pid``, the URL clients
  reach it at), and
- marks as interrupted the running jobs of the servers in ``servers`` that have not been seen for
  ``stale_seconds`` (`STALE_SECONDS` by default: killed, or its machine lost): the "interrupted
  after a crash" rule of a single server, across servers. The model's current version is
  untouched (a training records its version only at its very end). A server that was only slow
  and comes back stops such jobs itself (`JobDB.cancel_requested` reports them).

Times that servers compare (``seen_at``) come from the database's clock, not each machine's, so
clock skew between machines does not make a live server look dead. Writers of
``shared_events`` take the table's lock for their short insert, so ids become visible in order
and a reader that remembers the last id it saw never skips a row committed late.

Events older than `KEEP_SECONDS` are pruned, and so are the rows of servers gone that long. An
event relayed from another server gets a new ``seq`` here (clients replay with ``Last-Event-ID``
per server).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from segloop.jobs.db import (
    JobDB,
    jobs_table,
    server_sessions_table,
    servers_table,
    shared_events_table,
    utcnow,
)
from segloop.jobs.events import Event, EventBus

log = logging.getLogger(__name__)

STALE_SECONDS = 30.0
KEEP_SECONDS = 900.0
LOCAL_ONLY_TYPES = frozenset({"stream.lagged", "stream.open", "stream.keepalive"})
ID_LENGTH = 64  # servers.id / server_sessions.server


def server_key(identity: str) -> str:
    """The ``servers.id`` of a runner identity (``host:pid``): itself, or a hashed short form
    when a long host name makes it longer than the column."""
    if len(identity) <= ID_LENGTH:
        return identity
    digest = hashlib.sha1(identity.encode()).hexdigest()[:16]
    return f"{identity[: ID_LENGTH - 17]}~{digest}"


def db_now(conn: sa.Connection) -> datetime:
    """The database's clock (naive UTC) on a server database; this machine's for SQLite."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(sa.text("SELECT CAST(now() AT TIME ZONE 'UTC' AS timestamp)")).scalar_one()
        return value if isinstance(value, datetime) else utcnow()
    return utcnow()


class ClusterLink:
    """One server's link to the others on a shared database (see the module docstring).

    ``server_id`` is the server's job-runner identity (``host:pid``, which the ``runner`` column of
    the jobs it claims holds); ``url`` is where clients reach this server (its public URL behind
    a proxy). ``stale_seconds``: a server not seen this long is taken for dead."""

    def __init__(
        self,
        db: JobDB,
        bus: EventBus,
        server_id: str,
        url: str,
        *,
        poll: float = 0.2,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        if stale_seconds <= 0 or poll <= 0:
            raise ValueError("stale_seconds and poll must be positive")
        self.db = db
        self.bus = bus
        self.runner_id = server_id
        self.server_id = server_key(server_id)
        self.url = url
        self.poll = poll
        self.stale_seconds = float(stale_seconds)
        self._outbox: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=20000)
        self._relaying = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: int | None = None
        self._last_id = 0
        self._last_beat = 0.0
        self._last_reap = 0.0
        self._last_prune = 0.0
        self.relayed = 0  # events received from other servers (for tests and /health)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        with self.db.engine.begin() as conn:
            now = db_now(conn)
            conn.execute(sa.delete(servers_table).where(servers_table.c.id == self.server_id))
            conn.execute(servers_table.insert().values(id=self.server_id, url=self.url, started_at=now, seen_at=now))
            self._last_id = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(shared_events_table.c.id), 0))).scalar_one()
            )
        self._token = self.bus.subscribe(self._on_local_event)
        self._thread = threading.Thread(target=self._loop, name="segloop-cluster-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._token is not None:
            self.bus.unsubscribe(self._token)
            self._token = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._flush()
            with self.db.engine.begin() as conn:
                conn.execute(sa.delete(server_sessions_table).where(server_sessions_table.c.server == self.server_id))
                conn.execute(sa.delete(servers_table).where(servers_table.c.id == self.server_id))
        except Exception:  # the database went away first: the others see us go stale
            log.exception("cluster link: leaving the servers table failed")

    # --- the registry -----------------------------------------------------------------------
    def live_servers(self) -> dict[str, str]:
        """``{server id: url}`` of the servers seen within ``stale_seconds`` (this one included)."""
        with self.db.reader.connect() as conn:
            cutoff = db_now(conn) - timedelta(seconds=self.stale_seconds)
            rows = conn.execute(
                sa.select(servers_table.c.id, servers_table.c.url).where(servers_table.c.seen_at >= cutoff)
            )
            return {r.id: r.url for r in rows}

    def claim_session(self, session_id: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                server_sessions_table.insert().values(id=session_id, server=self.server_id, created_at=utcnow())
            )

    def release_session(self, session_id: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(server_sessions_table).where(server_sessions_table.c.id == session_id))

    def session_server(self, session_id: str) -> tuple[str, str] | None:
        """``(server id, url)`` of the live server holding ``session_id``, or None."""
        with self.db.reader.connect() as conn:
            row = conn.execute(
                sa.select(server_sessions_table.c.server).where(server_sessions_table.c.id == session_id)
            ).first()
        if row is None:
            return None
        url = self.live_servers().get(row.server)
        return None if url is None else (row.server, url)

    # --- events -----------------------------------------------------------------------------
    def _on_local_event(self, event: Event) -> None:
        if getattr(self._relaying, "active", False) or event["type"] in LOCAL_ONLY_TYPES:
            return  # published by this link from another server, or meaningless elsewhere
        self._outbox.append((event["type"], event["data"]))

    def _flush(self) -> None:
        batch: list[tuple[str, dict[str, Any]]] = []
        while self._outbox:
            batch.append(self._outbox.popleft())
        if not batch:
            return
        now = utcnow()
        rows = [
            {"time": now, "origin": self.server_id, "type": t, "data": json.dumps(d, default=str)} for t, d in batch
        ]
        try:
            with self.db.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # ids are drawn from a sequence at insert time: without this lock a transaction
                    # could commit id n after another committed n+1 and a reader already past n+1
                    # would never see it. EXCLUSIVE lets readers (SELECT) through.
                    conn.execute(sa.text("LOCK TABLE shared_events IN EXCLUSIVE MODE"))
                conn.execute(shared_events_table.insert(), rows)
        except Exception:
            self._outbox.extendleft(reversed(batch))  # retried next round (the deque stays bounded)
            raise

    def _receive(self) -> None:
        with self.db.reader.connect() as conn:
            rows = conn.execute(
                sa.select(shared_events_table.c.id, shared_events_table.c.origin, shared_events_table.c.type,
                          shared_events_table.c.data)
                .where(shared_events_table.c.id > self._last_id)
                .order_by(shared_events_table.c.id)
                .limit(1000)
            ).all()
        for row in rows:
            self._last_id = max(self._last_id, int(row.id))
            if row.origin == self.server_id:
                continue
            self._relaying.active = True
            try:
                self.bus.publish(row.type, json.loads(row.data))
                self.relayed += 1
            finally:
                self._relaying.active = False

    # --- upkeep -----------------------------------------------------------------------------
    def _beat(self) -> None:
        with self.db.engine.begin() as conn:
            now = db_now(conn)
            done = conn.execute(
                servers_table.update().where(servers_table.c.id == self.server_id).values(seen_at=now, url=self.url)
            )
            if not done.rowcount:  # pruned while this server could not reach the database
                conn.execute(
                    servers_table.insert().values(id=self.server_id, url=self.url, started_at=now, seen_at=now)
                )

    def reap(self) -> list[str]:
        """Mark as interrupted the running jobs of the servers not seen for ``stale_seconds``
        (only servers of this table: a job run by a CLI process is not a server's to judge)."""
        marked: list[str] = []
        with self.db.engine.begin() as conn:
            cutoff = db_now(conn) - timedelta(seconds=self.stale_seconds)
            dead = {
                r.id
                for r in conn.execute(
                    sa.select(servers_table.c.id).where(
                        servers_table.c.seen_at < cutoff, servers_table.c.id != self.server_id
                    )
                )
            }
            if not dead:
                return marked
            rows = conn.execute(
                sa.select(jobs_table.c.id, jobs_table.c.runner).where(jobs_table.c.state == "running")
            ).all()
            for r in rows:
                if r.runner is None or server_key(r.runner) not in dead:
                    continue
                done = conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == r.id, jobs_table.c.state == "running")
                    .values(
                        state="interrupted",
                        message=f"interrupted: its server ({r.runner}) stopped while this job was running",
                        finished_at=utcnow(),
                    )
                )
                if done.rowcount:
                    marked.append(r.id)
        for job_id in marked:
            log.warning("job %s marked interrupted: its server stopped answering", job_id)
            self.bus.publish("job.state", self.db.get(job_id).to_dict())
        return marked

    def _prune(self) -> None:
        with self.db.engine.begin() as conn:
            now = db_now(conn)
            conn.execute(
                sa.delete(shared_events_table).where(shared_events_table.c.time < now - timedelta(seconds=KEEP_SECONDS))
            )
            # servers gone long ago (their running jobs were reaped meanwhile) and their sessions
            gone = (
                sa.select(servers_table.c.id)
                .where(servers_table.c.seen_at < now - timedelta(seconds=max(KEEP_SECONDS, 10 * self.stale_seconds)))
                .scalar_subquery()
            )
            conn.execute(sa.delete(server_sessions_table).where(server_sessions_table.c.server.in_(gone)))
            conn.execute(
                sa.delete(servers_table).where(
                    servers_table.c.seen_at < now - timedelta(seconds=max(KEEP_SECONDS, 10 * self.stale_seconds))
                )
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._flush()
                self._receive()
                now = time.monotonic()
                if now - self._last_beat >= self.stale_seconds / 6:
                    self._beat()
                    self._last_beat = now
                if now - self._last_reap >= self.stale_seconds / 3:
                    self.reap()
                    self._last_reap = now
                if now - self._last_prune >= 60.0:
                    self._prune()
                    self._last_prune = now
            except Exception:
                log.exception("cluster link round failed (retrying)")
