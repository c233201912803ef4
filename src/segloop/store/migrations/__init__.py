"""Schema migrations (Alembic) of a data folder's three schemas, for SQLite and PostgreSQL alike.

Each schema (``store``, ``jobs``, ``scores``; see `segloop.store.database`) has its own chain of
revisions in the sub-folder of that name and its own version table (``segloop_schema_<name>``),
so the chains work whether the schemas share one PostgreSQL database or sit in three SQLite
files. The first revision of each chain is the schema as segloop created it before Alembic; a
data folder from then (tables, no version table) is stamped with it and upgraded in place.

`ensure` runs whenever a process opens a database: a new, empty database gets the current tables
(``create_all``) stamped with the head; one at the head costs one query; one behind is upgraded
there and then when it is SQLite (the single-machine default), and refused with a clear message
when it is a server database, where ``segloop db upgrade`` is an operator's step (several servers
may be running the old version). A database newer than this segloop is always refused.
Concurrent openers serialise on the schema's lock (SQLite's write lock, PostgreSQL's advisory lock).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from segloop.store.errors import StoreError

HERE = Path(__file__).resolve().parent
SCHEMAS: tuple[str, ...] = ("store", "jobs", "scores")
# the chains' revisions in order; the last is the head this code writes and reads
CHAINS: dict[str, tuple[str, ...]] = {
    "store": ("store_0001",),
    "jobs": ("jobs_0001", "jobs_0002"),
    "scores": ("scores_0001", "scores_0002"),
}
HEADS: dict[str, str] = {name: chain[-1] for name, chain in CHAINS.items()}


class SchemaError(StoreError):
    """The database's schema is not the one this segloop uses (upgrade needed, or newer)."""


@dataclass(frozen=True)
class UpgradeResult:
    schema: str
    before: str | None  # None: new database; "legacy": tables from before Alembic
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def version_table(schema: str) -> str:
    return f"segloop_schema_{schema}"


def _version_table_def(schema: str) -> sa.Table:
    # the layout Alembic itself uses, so that it reads and updates the table we create
    name = version_table(schema)
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{name}_pkc"),
    )


def current(conn: Connection, schema: str, tables: sa.MetaData | None = None) -> str | None:
    """The schema's revision in the database: a revision id, ``"legacy"`` (tables of the schema
    but no version table) or None (none of its tables)."""
    inspector = sa.inspect(conn)
    if inspector.has_table(version_table(schema)):
        rows = conn.execute(sa.select(_version_table_def(schema).c.version_num)).scalars().all()
        if len(rows) == 1:
            return str(rows[0])
        raise SchemaError(f"the {schema} schema's version table holds {rows!r}, expected one revision")
    if tables is not None and any(inspector.has_table(name) for name in tables.tables):
        return "legacy"
    return None


def _lock(conn: Connection, schema: str) -> None:
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"segloop-schema-{schema}".encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    # SQLite: the caller's engine begins with BEGIN IMMEDIATE (the database's write lock)


def ensure(engine: Engine, schema: str, tables: sa.MetaData, *, auto_upgrade: bool | None = None) -> UpgradeResult:
    """Make the database hold ``schema`` at its head (see the module's docstring).

    ``engine`` must take the write lock when it begins on SQLite. ``auto_upgrade`` None: upgrade
    an SQLite database, refuse a server database that is behind (`SchemaError`)."""
    head = HEADS[schema]
    with engine.connect() as conn:
        found = current(conn, schema, tables)
    if found == head:
        return UpgradeResult(schema, head, head)
    with engine.begin() as conn:
        _lock(conn, schema)
        found = current(conn, schema, tables)
        if found == head:
            return UpgradeResult(schema, head, head)
        _check_known(schema, found)
        if found is None:
            tables.create_all(conn)
            table = _version_table_def(schema)
            table.create(conn)
            conn.execute(table.insert().values(version_num=head))
            return UpgradeResult(schema, None, head)
        sqlite = conn.dialect.name == "sqlite"
        if not (sqlite if auto_upgrade is None else auto_upgrade):
            raise SchemaError(
                f"the database's {schema} schema is at {found}, this segloop needs {head}: "
                "run `segloop db upgrade --db URL` once (with the servers on the old version stopped)"
            )
        run_migrations(conn, schema, found)
        return UpgradeResult(schema, found, head)


def upgrade(engine: Engine, schema: str, tables: sa.MetaData) -> UpgradeResult:
    """``segloop db upgrade``: bring ``schema`` to the head whatever the database (new ones too)."""
    return ensure(engine, schema, tables, auto_upgrade=True)


def status(engine: Engine, schema: str, tables: sa.MetaData) -> str | None:
    with engine.connect() as conn:
        return current(conn, schema, tables)


def _check_known(schema: str, found: str | None) -> None:
    if found is None or found == "legacy" or found in CHAINS[schema]:
        return
    raise SchemaError(
        f"the database's {schema} schema is at revision {found!r}, which this segloop does not know "
        f"(its newest is {HEADS[schema]}): it was upgraded by a newer segloop; use that version"
    )


def run_migrations(conn: Connection, schema: str, found: str | None, target: str | None = None) -> None:
    """Run ``schema``'s Alembic chain on ``conn`` from ``found`` (None: an empty database,
    ``"legacy"``: tables from before Alembic) to ``target`` (default: the head)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(HERE / schema))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = version_table(schema)
    if found == "legacy":
        command.stamp(cfg, CHAINS[schema][0])  # the tables as segloop made them before Alembic
    command.upgrade(cfg, target or HEADS[schema])
