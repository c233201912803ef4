"""Which database a data folder's tables live in: SQLite files in the folder (the embedded
default) or one server database (PostgreSQL) shared by every process that opens the folder.

The three schemas of a data folder:

=========  ==========================  ======================================================
schema     SQLite default              what
=========  ==========================  ======================================================
store      ``segloop.db``              images, label revisions, label schema, models
jobs       ``jobs.db``                 jobs, their metrics and logs, evaluations, shared events
scores     ``activelearning.db``       active-learning score cache
=========  ==========================  ======================================================

With a server database (``--db postgresql://...`` or the ``SEGLOOP_DB`` environment variable)
all three live in that one database (their table names do not overlap), so that several servers
and their job workers see the same jobs and scores, not only the same images. Files (images,
labels, checkpoints) stay in the data folder, which those processes then share (a shared file
system when they run on several machines).

A folder opened with a server database remembers it in ``database.json`` (the URL without its
password), and refuses to be opened with another database: a shared folder opened without
``--db`` must not quietly start an empty SQLite store beside the real one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from segloop.store.errors import ValidationError

Schema = Literal["store", "jobs", "scores"]
ENV_VAR = "SEGLOOP_DB"
BINDING_FILE = "database.json"
SQLITE_FILES: dict[str, str] = {"store": "segloop.db", "jobs": "jobs.db", "scores": "activelearning.db"}


class DatabaseError(ValidationError):
    """The database URL is unusable or does not belong to this data folder."""


def normalize_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: ``postgresql://`` and ``postgres://`` use
    psycopg 3 (the ``segloop[postgres]`` extra) unless psycopg2 is installed."""
    text = url.strip()
    try:
        parsed = make_url(text)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {redact(text)!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
        backend = "postgresql"
    if backend == "postgresql":
        driver = parsed.get_driver_name() if "+" in parsed.drivername else None
        if driver is None:
            driver = "psycopg" if _has("psycopg") or not _has("psycopg2") else "psycopg2"
            parsed = parsed.set(drivername=f"postgresql+{driver}")
        if not _has(driver):
            raise DatabaseError(
                f"the PostgreSQL driver {driver!r} is not installed: pip install 'segloop[postgres]'"
            )
    elif backend != "sqlite":
        raise DatabaseError(f"unsupported database {backend!r} in {redact(text)!r}: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def redact(url: str | URL) -> str:
    """The URL without its password (for messages, logs and ``database.json``)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable URL>"
    if not parsed.password:
        return parsed.render_as_string(hide_password=False)
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query)
    return bare.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def configured_url(url: str | None = None) -> str | None:
    """The server database asked for: ``url``, else ``$SEGLOOP_DB``; None means SQLite files."""
    text = url if url is not None else os.environ.get(ENV_VAR, "")
    text = (text or "").strip()
    return normalize_url(text) if text else None


def resolve(root: Path | str, schema: Schema, url: str | None = None) -> str:
    """The SQLAlchemy URL of ``schema`` for the data folder ``root``.

    ``url`` (or ``$SEGLOOP_DB``) names a server database; a ``sqlite:`` URL there is taken for the
    store schema only (the others stay in their files beside it). Raises `DatabaseError` when the
    folder is bound to another database, or holds an SQLite store while a server database is asked for.
    """
    root = Path(root).expanduser().resolve()
    wanted = configured_url(url)
    binding = read_binding(root)
    if wanted is None or is_sqlite(wanted):
        if binding is not None:
            raise DatabaseError(
                f"{root}: this data folder's store is in the database {binding} (see {BINDING_FILE}); "
                f"pass --db with that URL or set {ENV_VAR}"
            )
        if wanted is not None and schema == "store":
            return wanted
        return f"sqlite:///{root / SQLITE_FILES[schema]}"
    shown = redact(wanted)
    if binding is None:
        if (root / SQLITE_FILES["store"]).exists():
            raise DatabaseError(
                f"{root} holds an SQLite store ({SQLITE_FILES['store']}); its images and labels are not in "
                f"{shown}. Use a new data folder for a server database (moving a store is not supported)"
            )
    elif not _same_database(binding, shown):
        raise DatabaseError(f"{root}: this data folder belongs to the database {binding}, not {shown}")
    return wanted


def bind(root: Path | str, url: str) -> None:
    """Record in ``root`` that its tables live in the server database ``url`` (no-op for SQLite)."""
    if is_sqlite(url):
        return
    path = Path(root) / BINDING_FILE
    if path.exists():
        return
    tmp = path.with_name(f".{BINDING_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": redact(url)}, indent=2) + "\n")
    os.replace(tmp, path)


def read_binding(root: Path) -> str | None:
    path = root / BINDING_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        url = json.loads(text)["url"]
    except (ValueError, KeyError, TypeError):
        raise DatabaseError(f"{path}: not a segloop database binding (expected {{\"url\": ...}})") from None
    return str(url)


def _same_database(a: str, b: str) -> bool:
    ua, ub = make_url(a), make_url(b)
    return (ua.get_backend_name(), ua.host, ua.port or 5432, ua.database, ua.username) == (
        ub.get_backend_name(), ub.host, ub.port or 5432, ub.database, ub.username
    )
