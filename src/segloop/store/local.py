"""The local datastore: files under one folder plus an SQL database (SQLite by default).

Layout under ``root``::

    segloop.db                                   SQLite database (WAL)
    images/<id>.nii.gz                           images
    labels/<image_id>/r<NNNNNN>-<random>.nii.gz  label revisions (unique names, never overwritten)
    models/<name>/v<NNNN>.pt                     model checkpoints
    attachments/<image_id>/<kind>/               files kept with an image (e.g. its DICOM headers)
    staging/                                     temporary files (same filesystem as the above)

Files are written to ``staging/``, fsynced and renamed into place *before* the row that makes
them visible is committed; a crash in between leaves an orphan file but never a row without
its file. Every method either succeeds or leaves the store as it was.

The store is put together from parts, one concept each (all share `LocalSessions`)::

    local_sessions   read/write transactions (the write lock), the image row lookup
    local_files      paths, staging, atomic writes, the sweep of crash leftovers
    local_schema     the label schema
    local_images     images and their attachments
    local_revisions  label revisions: append-only saves, the stale-base rule (409), finals
    local_models     models and their checkpoint versions
    names            image ids from display names, model names, text checks
    json_data        metadata, configs and metrics as plain JSON data

This module composes them into `LocalDatastore` and owns its life cycle (engines, closing).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from segloop.store import database
from segloop.store.local_images import LocalImages
from segloop.store.local_models import LocalModels
from segloop.store.local_revisions import LocalRevisions
from segloop.store.local_revisions import _prepare_label as _prepare_label
from segloop.store.local_schema import DEFAULT_BACKGROUND, MAX_LABEL_VALUE, LocalSchema
from segloop.store.names import MAX_ID_LENGTH, MAX_NAME_LENGTH, check_model_name, slugify
from segloop.store.sql import WRITE_OPTION, create_schema, make_engine

__all__ = [
    "DB_NAME",
    "DEFAULT_BACKGROUND",
    "MAX_ID_LENGTH",
    "MAX_LABEL_VALUE",
    "MAX_NAME_LENGTH",
    "LocalDatastore",
    "check_model_name",
    "open_datastore",
    "slugify",
]

DB_NAME = "segloop.db"

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _dispose_after_fork() -> None:
    # A forked child must not reuse its parent's pooled connections.
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)


class LocalDatastore(LocalRevisions, LocalModels, LocalImages, LocalSchema):
    """Images, label revisions and model versions in a folder plus SQLite.

    Safe to share between threads, and between processes opening the same folder.
    ``url`` (default: ``$SEGLOOP_DB``, else ``segloop.db`` in ``root``) selects another database
    (PostgreSQL) for the same tables; files still live under ``root`` (`segloop.store.database`).
    """

    def __init__(self, root: Path | str, *, url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "labels", "models", "staging", "attachments"):
            (self.root / sub).mkdir(exist_ok=True)
        self.url = database.resolve(self.root, "store", url)
        self._engine = make_engine(self.url)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        _engines.add(self._engine)
        create_schema(self._engine)
        database.bind(self.root, self.url)

    def __repr__(self) -> str:
        return f"LocalDatastore({str(self.root)!r})"

    def close(self) -> None:
        """Close pooled database connections (the store can still be used; it reconnects)."""
        self._engine.dispose()

    def secure_delete(self) -> None:
        """SQLite: from now on deleted rows are overwritten with zeros in the database file
        (``PRAGMA secure_delete``), so a deleted image's metadata does not linger in free space
        (ephemeral mode). Pooled connections are closed so every connection gets the setting."""
        if self._engine.dialect.name != "sqlite":
            return

        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            try:
                cur.execute("PRAGMA secure_delete = ON")
            finally:
                cur.close()

        event.listen(self._engine, "connect", _on_connect)
        self._engine.dispose()

    def __enter__(self) -> LocalDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_datastore(root: Path | str, *, url: str | None = None) -> LocalDatastore:
    """Open (creating it if needed) the local datastore in folder ``root``."""
    return LocalDatastore(root, url=url)
