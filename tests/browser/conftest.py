"""Browser tests: Playwright driving Debian's Chromium (headless) against a real segloop server
with the built web app, on a free loopback port, with a few Task04_Hippocampus cases and a tiny
model trained here. Screenshots of each state go to the test's output folder.

Needs: ``scripts/web.sh build`` (web/dist) and ``scripts/web.sh install-browser`` (chromium +
the playwright package). Missing pieces skip the tier with the command that provides them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT  # noqa: F401 (re-exported for the tests)

DATA = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007"]
VIEWPORT = {"width": 1366, "height": 768}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _segloop(*args: str) -> None:
    exe = Path(sys.executable).parent / "segloop"
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


@pytest.fixture(scope="session")
def browser_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with five cases and their reference labels, and a tiny model ``tiny``."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is missing")
    src = tmp_path_factory.mktemp("browser-src")
    (src / "images").mkdir()
    (src / "labels").mkdir()
    if (DATA / "dataset.json").is_file():  # class names (Anterior, Posterior) for the schema
        shutil.copy(DATA / "dataset.json", src)
    for case in CASES:
        shutil.copy(DATA / "imagesTr" / f"{case}.nii.gz", src / "images")
        shutil.copy(DATA / "labelsTr" / f"{case}.nii.gz", src / "labels")
    data = tmp_path_factory.mktemp("browser-data")
    _segloop("import", str(src / "images"), "--labels", str(src / "labels"), "--data", str(data))
    # Tiny on purpose: the tests check the loop, not the model (clicked voxels always get the class).
    # 16^3 patches: a click changes only the 16^3 box around it, so brushed voxels further away
    # must survive a click unchanged (the test of strokes pushed into the session relies on it).
    config = data / "tiny-config.json"
    config.write_text('{"patch_size": [16, 16, 16]}')
    _segloop("train", "tiny", "--data", str(data), "--config", str(config), "--epochs", "1", "--steps-per-epoch", "1",
             "--batch-size", "1", "--val-split", "0.2", "--quiet", "--device", "cpu")
    return data


@contextlib.contextmanager
def web_server(
    data: Path, dist: Path, log: Path, extra: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """`tests.browser.webserver` on a free loopback port (stopped, by its process id, at exit); yields its URL."""
    port = _free_port()
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", **(env or {}))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.browser.webserver", "--data", str(data), "--port", str(port),
             "--dist", str(dist), *extra],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server(web_dist: Path, browser_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("browser-server") / "server.log"
    # SEGLOOP_SCORE_SYNC_PASSES=0: a model-based queue is always ranked by a score job (GET /next
    # answers 202 first), so the tests see the scoring progress in the worklist.
    with web_server(browser_data, web_dist, log, env={"SEGLOOP_SCORE_SYNC_PASSES": "0"}) as url:
        yield url


class AppPage:
    """One browser tab on the app, with helpers; records external requests and page errors."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.external: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)

    def _request(self, req: Any) -> None:
        url: str = req.url
        if not (url.startswith(self.base) or url.startswith(("data:", "blob:"))
                or url.startswith(self.base.replace("http", "ws"))):
            self.external.append(url)

    def open(self, image_id: str) -> None:
        self.page.goto(f"{self.base}/?image={image_id}")
        self.page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
        self.page.wait_for_function("id => document.body.dataset.imageId === id", arg=image_id, timeout=60_000)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def key(self, keys: str) -> None:
        self.page.locator("#gl").focus()
        self.page.keyboard.press(keys)

    def canvas_point(self, fx: float, fy: float) -> tuple[float, float]:
        box = self.page.locator("#gl").bounding_box()
        assert box is not None
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    def body(self, name: str) -> str | None:
        value: str | None = self.page.evaluate("n => document.body.dataset[n] ?? null", name)
        return value

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = self.page.evaluate("() => window.segloopDebug.counts()")
        return out

    def voxel_at(self, x: float, y: float) -> list[int]:
        vox: list[int] | None = self.page.evaluate("p => window.segloopDebug.voxelAt(p[0], p[1])", [x, y])
        assert vox is not None, f"no image voxel at {x}, {y}"
        return vox

    def value(self, vox: list[int]) -> int:
        v: int = self.page.evaluate("v => window.segloopDebug.value(v[0], v[1], v[2])", vox)
        return v

    def has_feature(self, name: str) -> bool:
        return name in (self.body("features") or "").split(",")

    def notices(self) -> str:
        text: str = self.page.inner_text("#notices")
        return text


@pytest.fixture()
def app(browser: Any, server: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppPage]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    a = AppPage(page, server, shots)
    try:
        yield a
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            a.shot("failure")
        context.close()
    assert not a.errors, f"errors in the page: {a.errors}"
    assert not a.external, f"the app fetched from outside the server: {a.external}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


@pytest.fixture()
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server}/api/v1", timeout=60) as c:
        yield c
