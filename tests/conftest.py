"""Shared pytest fixtures (keep minimal; each package adds its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/conftest.py -> repo root is parents[1]; shared/ sits beside the checkout.
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CHROMIUM = Path(os.environ.get("SEGLOOP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real public datasets, see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (see ARCHITECTURE.md)")
    return SHARED_DATA


# The browser fixtures live here, not in tests/browser, because two tiers use them (tests/browser and
# tests/pacs): one session-wide Playwright instance for the whole run — a second `sync_playwright()`
# started while the first is alive fails ("Sync API inside the asyncio loop").


@pytest.fixture(scope="session")
def web_dist() -> Path:
    dist = ROOT / "web" / "dist"
    if not (dist / "index.html").is_file():
        if shutil.which("npm") is None:
            pytest.skip("web/dist is missing and npm is not installed: run scripts/web.sh build")
        subprocess.run(["bash", str(ROOT / "scripts" / "web.sh"), "build"], check=True, timeout=900)
    return dist


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: run scripts/web.sh install-browser")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/web.sh install-browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


# test folders whose modules share session-scoped servers and build on each other's state
SHARED_SESSION_FOLDERS = ("browser", "pacs")


def worker_unit(nodeid: str) -> str:
    """The unit of work of one pytest-xdist worker for a test ``nodeid``; a unit runs on one worker,
    its tests in their order.

    - A module is a unit: module-scoped servers and clusters, and the data that earlier tests of the
      module made, are shared.
    - ``tests/browser`` and ``tests/pacs`` are one unit each (`SHARED_SESSION_FOLDERS`): their modules
      share one server for the session (the web server and its data folder; one Orthanc), and each
      expects what the modules before it left (a label still final, the series stored so far) as in
      a run on one process.
    - Every ``test_ray_*`` module is one unit: two Ray clusters never compete for a 2-core machine's
      CPUs (their tests wait on multi-process training with deadlines).
    """
    module = Path(nodeid.split("::", 1)[0])
    if module.parts[0] == "tests" and len(module.parts) > 2 and module.parts[1] in SHARED_SESSION_FOLDERS:
        return f"tests/{module.parts[1]}"
    return "ray-cluster" if module.name.startswith("test_ray_") else module.as_posix()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` (scripts/test.sh) with the units of `worker_unit`.

    (xdist's ``xdist_group`` marks cannot do it: pytest-xdist 3.8 writes the group into the node id
    where pytest 9 no longer reads it.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_unit(nodeid)

    return ModuleScheduling(config, log)
