"""``segloop db upgrade|status``: the schemas of a data folder's databases (Alembic migrations)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segloop.cli.common import CommandError, add_data_arg, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "db",
        help="upgrade or show the schema of a data folder's databases",
        description=(
            "The data folder's tables (store, jobs, scores) live in SQLite files in --data, or in the "
            "server database --db. `upgrade` brings them to this version's schema in place (SQLite "
            "folders are also upgraded when opened; a server database only by this command). "
            "`status` prints each schema's revision."
        ),
    )
    sub = p.add_subparsers(dest="db_command", metavar="ACTION")
    sub.required = True
    up = sub.add_parser("upgrade", help="migrate the schemas to this version (in place)")
    add_data_arg(up)
    up.set_defaults(func=cmd_upgrade)
    st = sub.add_parser("status", help="print each schema's revision and this version's head")
    add_data_arg(st)
    st.set_defaults(func=cmd_status)


def _schemas(data: Path) -> list[tuple[str, str, Any]]:
    from segloop.activelearning.cache import metadata as scores_tables
    from segloop.jobs.db import metadata as jobs_tables
    from segloop.store.database import DatabaseError, resolve
    from segloop.store.sql import Base

    try:
        return [
            (schema, resolve(data, schema), tables)  # type: ignore[arg-type]
            for schema, tables in (("store", Base.metadata), ("jobs", jobs_tables), ("scores", scores_tables))
        ]
    except DatabaseError as exc:
        raise CommandError(str(exc)) from exc


def cmd_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy import insert

    from segloop.store import database
    from segloop.store.migrations import upgrade
    from segloop.store.sql import SCHEMA_VERSION, WRITE_OPTION, StoreMetaRow, make_engine

    data: Path = args.data
    if not data.is_dir():
        raise CommandError(f"{data}: no such folder")
    out = []
    for schema, url, tables in _schemas(data):
        engine = make_engine(url)
        try:
            result = upgrade(engine.execution_options(**{WRITE_OPTION: True}), schema, tables)
            if schema == "store" and result.before is None:
                with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
                    conn.execute(insert(StoreMetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))
        finally:
            engine.dispose()
        if schema == "store":
            database.bind(data, url)
        out.append({"schema": schema, "database": database.redact(url), "before": result.before,
                    "after": result.after, "changed": result.changed})
    print_json(out)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from segloop.store import database
    from segloop.store.migrations import HEADS, status
    from segloop.store.sql import make_engine

    out = []
    for schema, url, tables in _schemas(args.data):
        engine = make_engine(url)
        try:
            found = status(engine, schema, tables)
        finally:
            engine.dispose()
        out.append({"schema": schema, "database": database.redact(url), "revision": found,
                    "head": HEADS[schema], "current": found == HEADS[schema]})
    print_json(out)
    return 0 if all(row["current"] for row in out) else 1
