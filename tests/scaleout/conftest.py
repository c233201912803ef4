"""Fixtures of the scale-out tier: a private PostgreSQL cluster (scripts/postgres.sh) for the
session, a fresh database per test, data folders built with today's (pre-Alembic) schema, and a
real Ray cluster (a head and a worker node on loopback) with a `JobRunner` on it per test module."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.scaleout._ray_cluster import RAY_BIN, RayCluster

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
LEGACY_FILES = {"store": "segloop.db", "jobs": "jobs.db", "scores": "activelearning.db"}


def _pg_installed() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").is_dir() else False


def _missing(what: str) -> None:
    """Skip the tier on a developer's machine; fail on CI (scripts/test.sh installs both)."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private PostgreSQL cluster's ``segloop`` database (started once per session)."""
    if not _pg_installed():
        _missing("PostgreSQL not installed (scripts/postgres.sh install)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("the PostgreSQL driver is missing: pip install 'segloop[postgres]'")
    folder = Path("/tmp") / f"segloop-pg-{uuid.uuid4().hex[:8]}"  # the postgres user must reach it
    url = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh"), "start", str(folder)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", str(folder)], timeout=60, check=False)


@pytest.fixture
def pg_url(postgres: str) -> Iterator[str]:
    """A new, empty database on the session's cluster (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_legacy_folder(folder: Path) -> Path:
    """A data folder whose three SQLite files hold today's schema exactly as segloop created it
    before Alembic (dumped from commit c1e1dfe into tests/scaleout/data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for schema, name in LEGACY_FILES.items():
        con = sqlite3.connect(folder / name)
        try:
            con.executescript((DATA / f"{schema}_2026-12-03.sql").read_text())
            con.commit()
        finally:
            con.close()
    for sub in ("images", "labels", "models", "staging", "attachments"):
        (folder / sub).mkdir(exist_ok=True)
    return folder


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- a real Ray cluster (tests/scaleout/test_ray_jobs.py, test_ray_ddp.py) ---------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    try:
        import ray  # noqa: F401
        import ray.util.client  # noqa: F401
    except ImportError:
        _missing("Ray is not installed: pip install 'segloop[ray]'")
    if not RAY_BIN.exists():
        _missing(f"{RAY_BIN} not found (the ray command of this environment)")
    # a short folder: Ray's socket paths live in it and must stay under 108 characters
    temp = Path(tempfile.mkdtemp(prefix="sgray-", dir="/tmp"))
    cluster = RayCluster(temp)
    saved = {k: os.environ.get(k) for k in cluster.env()}
    os.environ.update(cluster.env())  # this process and the servers it starts are the drivers
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        subprocess.run(["rm", "-rf", str(temp)], check=False, timeout=60)


@pytest.fixture(scope="module")
def ray_runner(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from segloop.jobs import JobRunner
    from tests.unit.al_synthetic import make_store

    folder = tmp_path_factory.mktemp("raydata")
    store, _, pool, _ = make_store(folder, n_train=4, n_pool=4)
    runner = JobRunner(folder, mode=ray_cluster.address, max_running=4, child_threads=1, poll_interval=0.1,
                       progress_interval=0.1)
    runner.start()
    try:
        yield runner, store
    finally:
        runner.stop(timeout=20)
