"""Alembic migrations of the data folder's schemas: a folder from today's (pre-Alembic) version
upgrades in place, the chains build exactly the tables the code uses, and a server database
binds its data folder."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from segloop.activelearning.cache import ScoreCache
from segloop.activelearning.cache import metadata as scores_tables
from segloop.cli import main
from segloop.imaging.volume import Volume
from segloop.jobs.db import JobDB
from segloop.jobs.db import metadata as jobs_tables
from segloop.store import LabelClass, LabelSchema
from segloop.store.database import DatabaseError
from segloop.store.local import open_datastore
from segloop.store.migrations import HEADS, SchemaError, run_migrations, version_table
from segloop.store.sql import Base, make_engine
from tests.scaleout.conftest import make_legacy_folder

TABLES = {"store": Base.metadata, "jobs": jobs_tables, "scores": scores_tables}


def _volume() -> Volume:
    return Volume(np.zeros((6, 5, 4), dtype=np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), {"modality": "CT"})


def _revision(path: Path, schema: str) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute(f"SELECT version_num FROM {version_table(schema)}").fetchone()[0])
    finally:
        con.close()


def test_todays_folder_upgrades_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    folder = make_legacy_folder(tmp_path / "data")
    with sqlite3.connect(folder / "segloop.db") as con:
        con.execute("INSERT INTO label_classes VALUES (1, 'liver', 200, 10, 10)")
    with sqlite3.connect(folder / "jobs.db") as con:
        con.execute(
            "INSERT INTO jobs (id, kind, params, state, progress, message, detail, cancel_requested, created_at)"
            " VALUES ('j1', 'train', '{}', 'done', 1.0, 'done', '{}', 0, '2026-12-01 10:00:00')"
        )
    with sqlite3.connect(folder / "activelearning.db") as con:
        con.execute("INSERT INTO al_scores VALUES ('img', 'seg', 1, 'entropy', '{}', 0.5, '2026-12-01')")

    assert main(["db", "status", "--data", str(folder)]) == 1  # legacy: not at the head
    assert main(["db", "upgrade", "--data", str(folder)]) == 0
    for schema, name in (("store", "segloop.db"), ("jobs", "jobs.db"), ("scores", "activelearning.db")):
        assert _revision(folder / name, schema) == HEADS[schema]
    assert main(["db", "status", "--data", str(folder)]) == 0

    store = open_datastore(folder)
    assert store.get_schema().by_value(1).name == "liver"
    image = store.add_image(_volume(), "ct", "test")
    rev = store.save_label(image.id, np.zeros((6, 5, 4), np.uint8), author="a")
    assert rev.revision == 1
    db = JobDB(folder)
    assert db.get("j1").state == "done"
    assert sa.inspect(db.engine).has_table("shared_events")  # the jobs chain's second revision
    db.dispose()
    cache = ScoreCache(folder)
    assert cache.get("seg", 1, "entropy", {}, ["img"]) == {"img": 0.5}
    cache.close()


def test_opening_todays_sqlite_folder_upgrades_it(tmp_path: Path) -> None:
    # the single-machine path: no separate step, `segloop serve` on an old folder just works
    folder = make_legacy_folder(tmp_path / "data")
    JobDB(folder).dispose()
    assert _revision(folder / "jobs.db", "jobs") == HEADS["jobs"]
    open_datastore(folder).close()
    assert _revision(folder / "segloop.db", "store") == HEADS["store"]


def _chain_matches_models(engine: sa.Engine) -> None:
    for schema, tables in TABLES.items():
        with engine.begin() as conn:
            run_migrations(conn, schema, None)
        with engine.connect() as conn:
            # the other schemas' tables and the version tables share this database: not compared here
            def mine(name: str | None, type_: str, parents: dict[str, str | None], tables: sa.MetaData = tables) -> bool:
                table = name if type_ == "table" else parents.get("table_name")
                return type_ == "schema" or table in tables.tables

            opts = {"compare_type": True, "include_name": mine}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), tables)
        assert diff == [], f"{schema}: the migrations and the code's tables differ: {diff}"


def test_migration_chains_build_the_tables_of_the_code_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'all.db'}")
    _chain_matches_models(engine)
    engine.dispose()


def test_migration_chains_build_the_tables_of_the_code_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    _chain_matches_models(engine)
    engine.dispose()


def test_server_database_behind_is_refused_until_db_upgrade(tmp_path: Path, pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.begin() as conn:  # today's version on PostgreSQL: the jobs tables, no version table
        jobs_tables.create_all(conn, tables=[jobs_tables.tables[n] for n in ("jobs", "job_metrics", "job_log", "evaluations")])
    engine.dispose()
    folder = tmp_path / "data"
    with pytest.raises(SchemaError, match="segloop db upgrade"):
        JobDB(folder, url=pg_url)
    assert main(["db", "upgrade", "--data", str(folder), "--db", pg_url]) == 0
    db = JobDB(folder, url=pg_url)
    job, held = db.create("score", {}, resource="score:x")
    assert held is None and db.get(job.id).state == "queued"
    db.dispose()


def test_a_server_database_binds_its_data_folder(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "shared"
    store = open_datastore(folder, url=pg_url)
    store.set_schema(LabelSchema((LabelClass(1, "tumour", (255, 0, 0)),)))
    store.close()
    binding = json.loads((folder / "database.json").read_text())
    password = pg_url.split("@")[0].rpartition(":")[2]
    assert binding["url"].endswith(pg_url.rpartition("/")[2]) and password not in binding["url"]
    assert not (folder / "segloop.db").exists()
    # without --db the folder refuses to open (no empty SQLite store beside the real one)
    with pytest.raises(DatabaseError, match="pass --db"):
        open_datastore(folder)
    assert main(["images", "--data", str(folder)]) == 2
    assert "pass --db" in capsys.readouterr().err
    assert main(["images", "--data", str(folder), "--db", pg_url]) == 0
    # and an SQLite folder cannot be opened against a server database
    sqlite_folder = tmp_path / "local"
    open_datastore(sqlite_folder).close()
    with pytest.raises(DatabaseError, match="holds an SQLite store"):
        open_datastore(sqlite_folder, url=pg_url)
