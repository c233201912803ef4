"""Fixtures of the integration tier (see `_harness` for the server process helper)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration._harness import Server, make_data


@pytest.fixture(scope="module")
def hippo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def server(hippo_data: Path) -> Iterator[Server]:
    srv = Server(hippo_data, "--max-upload", "600K", "--job-threads", "1").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api, timeout=120) as c:
        yield c
