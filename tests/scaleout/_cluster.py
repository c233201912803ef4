"""Helpers of the scale-out tier shared by its tests and benchmarks/bench_scaleout.py: a fresh
database on a PostgreSQL cluster, a data folder of hippocampus cases in it, two real
``segloop serve`` processes on that database and folder, label uploads and an SSE reader."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

from tests.integration._harness import Server, hippo_label, make_data


def _engine_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def create_database(cluster_url: str) -> str:
    """A new, empty database on the cluster of ``cluster_url``; its URL."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_engine_url(cluster_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return f"{cluster_url.rpartition('/')[0]}/{name}"


def drop_database(cluster_url: str, url: str) -> None:
    import sqlalchemy as sa

    name = url.rpartition("/")[2]
    admin = sa.create_engine(_engine_url(cluster_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def segloop_db(url: str) -> Iterator[None]:
    """``$SEGLOOP_DB`` = ``url`` for this process meanwhile (the store opened here uses it)."""
    old = os.environ.get("SEGLOOP_DB")
    os.environ["SEGLOOP_DB"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SEGLOOP_DB", None)
        else:
            os.environ["SEGLOOP_DB"] = old


def make_shared_data(folder: Path, url: str, cases: tuple[str, ...] = ("001", "003", "004", "006", "007")) -> Path:
    """A data folder whose tables are in ``url``: ``cases`` with their reference labels (revision 1)."""
    with segloop_db(url):
        return make_data(folder, cases)


def start_servers(data: Path, url: str, *extra: str, count: int = 2) -> list[Server]:
    """``count`` ``segloop serve`` processes on one data folder and one database (started
    together, then waited for)."""
    servers = [Server(data, "--db", url, "--job-threads", "1", "--inference-threads", "1", *extra)
               for _ in range(count)]
    try:
        for s in servers:
            s.wait_ready()
    except Exception:
        for s in servers:
            s.stop()
        raise
    return servers


def label_bytes(case: str = "001", shift: int = 0) -> bytes:
    """A gzip NIfTI label on the grid of hippocampus ``case`` (its reference, rolled by ``shift``)."""
    img = nib.load(str(hippo_label(case)))
    data = np.roll(np.asarray(img.dataobj).astype(np.uint8), shift, axis=0)
    return gzip.compress(nib.Nifti1Image(data, img.affine).to_bytes(), compresslevel=1)


def save_label(client: httpx.Client, image_id: str, body: bytes, base: int | None) -> httpx.Response:
    data = {} if base is None else {"base_revision": str(base)}
    return client.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", body)}, data=data)


def image_of_case(client: httpx.Client, case: str) -> dict[str, Any]:
    for item in client.get("/images", params={"limit": 100}).json()["items"]:
        if case in json.dumps(item):
            return dict(item)
    raise AssertionError(f"no image of case {case}")


class SseReader:
    """Reads a server's ``/api/v1/events`` in a thread; events land in ``events`` (a queue)."""

    def __init__(self, api: str, types: str | None = None) -> None:
        self.api = api
        self.types = types
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.open = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.open.wait(30):
            raise AssertionError("the event stream did not open")

    def _run(self) -> None:
        params = {"types": self.types} if self.types else {}
        try:
            with httpx.Client(timeout=httpx.Timeout(5, read=60)) as c, \
                    c.stream("GET", f"{self.api}/events", params=params) as r:
                self.open.set()
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("data: "):
                        self.events.put(json.loads(line[6:]))
        except httpx.HTTPError:
            if not self._stop.is_set():  # the server went away while a test was waiting
                raise

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        import time

        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("the expected event did not arrive")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(event):
                return event

    def close(self) -> None:
        self._stop.set()
