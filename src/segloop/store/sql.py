"""SQL tables of the local datastore (SQLAlchemy 2.x ORM) and engine set-up.

Portable SQL only (SQLite is the embedded default; PostgreSQL works through the same
tables). SQLite connections use WAL, a busy timeout and ``BEGIN IMMEDIATE`` for write
transactions, so several threads and several processes can share one database file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    insert,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
WRITE_OPTION = "segloop_write"  # execution option that makes SQLite start with BEGIN IMMEDIATE


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp (SQLite forgets the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class StoreMetaRow(Base):
    """Key/value settings of the store (schema version, ...)."""

    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LabelClassRow(Base):
    __tablename__ = "label_classes"
    value: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    red: Mapped[int] = mapped_column(Integer)
    green: Mapped[int] = mapped_column(Integer)
    blue: Mapped[int] = mapped_column(Integer)


class ImageRow(Base):
    """One image; ``label_state``/``latest_*`` summarise its latest label revision so that
    listing and filtering by label state is a single indexed query."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # lower-cased id: unique, so ids never collide on case-insensitive filesystems
    id_key: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    modality: Mapped[str] = mapped_column(String(64))
    shape: Mapped[list[int]] = mapped_column(JSON)
    spacing: Mapped[list[float]] = mapped_column(JSON)
    affine: Mapped[list[list[float]]] = mapped_column(JSON)
    channels: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(32))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    path: Mapped[str] = mapped_column(Text)  # relative to the store root
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    label_state: Mapped[str] = mapped_column(String(8), default="none", index=True)
    latest_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latest_author: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_images_created", "created_at", "id"),)


class LabelRevisionRow(Base):
    __tablename__ = "label_revisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(String(128), ForeignKey("images.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    parent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    author: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    path: Mapped[str] = mapped_column(Text)  # relative to the store root
    dtype: Mapped[str] = mapped_column(String(16))
    voxel_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    finalized_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        UniqueConstraint("image_id", "revision", name="uq_label_revisions_image_revision"),
        Index("ix_label_revisions_status", "status", "image_id", "revision"),
    )


class ModelRow(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    current_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), ForeignKey("models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[str] = mapped_column(Text)  # relative to the store root
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    trained_on: Mapped[list[list[Any]]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("model", "version", name="uq_model_versions_model_version"),)


def _install_sqlite_hooks(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys; SQLAlchemy (not sqlite3) emits BEGIN, and write
    transactions take the write lock up front (``BEGIN IMMEDIATE``) so that a reader that
    later writes never fails with "database is locked" on a stale snapshot."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the SQLite settings above when it is SQLite; a server database
    (PostgreSQL) gets a checked connection pool (``postgresql://`` uses psycopg 3)."""
    from segloop.store.database import normalize_url

    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_pre_ping=False,
        )
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)


def create_schema(engine: Engine) -> None:
    """Create the tables if missing, or bring them to this version's schema (Alembic, see
    `segloop.store.migrations`); serialised between processes by a write transaction."""
    from segloop.store.migrations import ensure

    writer = engine.execution_options(**{WRITE_OPTION: True})
    result = ensure(writer, "store", Base.metadata)
    if result.before is None:  # a new database: the same store_meta row as the baseline writes
        with writer.begin() as conn:
            conn.execute(insert(StoreMetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))
