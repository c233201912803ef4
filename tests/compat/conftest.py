"""The MONAI-Label-compatible surface against a real ``segloop serve`` process.

One server per package run: a data folder with five hippocampus cases (final reference labels)
and a tiny model ``hippo`` trained through MONAI Label's own Python client (``train_start``),
so both modules use the same model. Waits poll with generous deadlines; no timed assertions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# MONAI Label's own client, installed by scripts/setup.sh (`pip install --no-deps monailabel`):
# a missing client is an error here, not a skip.
import monailabel.client  # noqa: E402, F401
import pytest

from tests.integration._harness import TINY_TRAIN, Server, make_data

MODEL = "hippo"


def wait_training_done(client: Any, deadline_s: float = 600.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not client.train_status(check_if_running=True):
            return
        time.sleep(0.5)
    raise AssertionError(f"training still running after {deadline_s}s")


@pytest.fixture(scope="package")
def compat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = make_data(tmp_path_factory.mktemp("compat"))
    srv = Server(data, "--job-threads", "1").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def trained(compat_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Model ``hippo`` trained through ``MONAILabelClient.train_start``; returns the start answer."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(compat_server.url, tmpdir=str(tmp_path_factory.mktemp("mlclient")))
    task = client.train_start(MODEL, dict(TINY_TRAIN))
    wait_training_done(client)
    return {"task": task, "status": client.train_status()}


@pytest.fixture()
def ml(compat_server: Server, tmp_path: Path) -> Any:
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(compat_server.url, tmpdir=str(tmp_path))
