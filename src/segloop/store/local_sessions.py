"""Database transactions of the local datastore, the base of its parts (`segloop.store.local`):
read sessions, write sessions that hold the write lock from the start, and the image row
lookup that most operations begin with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from segloop.store.errors import NotFoundError
from segloop.store.sql import ImageRow, StoreMetaRow


class LocalSessions:
    """What every part of `LocalDatastore` shares: its folder, its engines (set up by
    `LocalDatastore.__init__`) and its transactions."""

    root: Path
    url: str
    _engine: Engine
    _writer: Engine

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it holds the write lock from the start, so the
        checks made inside it still hold at commit (processes and threads serialise here)."""
        with Session(self._writer, expire_on_commit=False) as s, s.begin():
            if self._engine.dialect.name != "sqlite":
                # serialise writers on other databases too (SQLite: BEGIN IMMEDIATE)
                s.execute(select(StoreMetaRow).where(StoreMetaRow.key == "schema_version").with_for_update())
            yield s

    def _image_row(self, s: Session, image_id: str) -> ImageRow:
        row = s.get(ImageRow, image_id) if isinstance(image_id, str) else None
        if row is None:
            raise NotFoundError(f"image {image_id!r} not found")
        return row
