"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segloop.imaging.errors import GeometryError, ImagingError
from segloop.store.errors import StoreError


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 2 unless given."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the layers' validation errors into `CommandError` (one line, no traceback)."""
    try:
        yield
    except (ImagingError, GeometryError, StoreError) as exc:
        raise CommandError(str(exc)) from exc


def add_data_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        metavar="DIR",
        help="segloop data folder (created on first import)",
    )
    add_db_arg(parser)


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="keep the data folder's tables (images, labels, models, jobs, scores) in this database, e.g. "
        "postgresql://USER:PASSWORD@HOST:PORT/NAME (pip install 'segloop[postgres]'); files stay in --data. "
        "Default: $SEGLOOP_DB, else SQLite files in --data",
    )


@contextmanager
def database_env(url: str | None) -> Iterator[None]:
    """For one command: ``--db URL`` as ``$SEGLOOP_DB``, which every layer that opens the data folder
    reads (the store, the jobs database, the score cache, job processes the command starts), and
    restored afterwards (commands also run in-process, e.g. in tests)."""
    from segloop.store.database import ENV_VAR, DatabaseError, normalize_url

    if url is None:
        yield
        return
    try:
        normalize_url(url)
    except DatabaseError as exc:
        raise CommandError(str(exc)) from exc
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def open_store(data: Path, must_exist: bool = True) -> Any:
    """Open the local datastore in ``data`` (its tables in ``--db``/``$SEGLOOP_DB`` when given);
    refuse a folder that holds none when ``must_exist``."""
    from segloop.store.database import BINDING_FILE, SQLITE_FILES
    from segloop.store.local import open_datastore

    if must_exist and not any((data / name).exists() for name in (SQLITE_FILES["store"], BINDING_FILE)):
        raise CommandError(f"{data}: no segloop data folder here (run `segloop import ... --data {data}` first)")
    return open_datastore(data)


@contextmanager
def counting_bar(desc: str, unit: str = "img", disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (made on the first call,
    closed on exit), for the layers' ``progress=`` arguments."""
    from tqdm import tqdm

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=disable)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
