"""The OpenAPI schema validates, and schemathesis finds no 5xx on the documented routes.

Runs the schemathesis CLI against a real server (its own data folder: two images with labels
and no trained model, so generated training requests fail fast instead of training for long).
The SSE stream (``GET /events``) is excluded: it never ends by design. Bounded examples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration._harness import CASES, ROOT, Server, make_data

pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = make_data(tmp_path_factory.mktemp("fuzz"), CASES[:2])
    srv = Server(data, "--max-upload", "1M", "--jobs", "1", "--job-threads", "1").wait_ready()
    yield srv
    srv.stop()


def test_openapi_schema_is_valid(fuzz_server: Server) -> None:
    from openapi_spec_validator import validate

    schema = httpx.get(f"{fuzz_server.api}/openapi.json").json()
    validate(schema)
    for path, ops in schema["paths"].items():
        assert path.startswith("/api/v1/"), path
        for op in ops.values():
            assert op.get("responses"), f"{path} documents no responses"


def test_schemathesis_no_server_errors(fuzz_server: Server, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    report = tmp_path / "report"
    cmd = [
        exe, "run", f"{fuzz_server.api}/openapi.json",
        "--checks", "not_a_server_error",
        "--exclude-path", "/api/v1/events",
        "--max-examples", "15",
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--seed", "20240601",
        "--request-timeout", "60",
        "--no-color",
        "--report", "junit", "--report-dir", str(report),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    out = r.stdout[-8000:] + r.stderr[-2000:]
    assert r.returncode == 0, out + "\n--- server log ---\n" + fuzz_server.log()
