"""Integration tier: real `segloop serve` processes on free loopback ports, driven over HTTP.

Data folders are made per test module from a few Task04_Hippocampus cases (tiny MRI crops with
reference labels) from ``../shared/data``. Waits poll the server with generous deadlines; no
assertion depends on timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
HIPPO = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
CASES = ("001", "003", "004", "006", "007", "008")
TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 2,
    "patch_size": [32, 32, 32],
    "val_split": 0.34,
    "network": {"channels": [8, 16, 32], "num_res_units": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hippo_image(case: str) -> Path:
    return HIPPO / "imagesTr" / f"hippocampus_{case}.nii.gz"


def hippo_label(case: str) -> Path:
    return HIPPO / "labelsTr" / f"hippocampus_{case}.nii.gz"


def make_data(folder: Path, cases: tuple[str, ...] = CASES[:5], unlabeled: tuple[str, ...] = ()) -> Path:
    """A data folder holding ``cases`` with their reference labels (final revision 1), and the
    images of ``unlabeled`` without any label."""
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore

    if not HIPPO.is_dir():
        pytest.skip(f"{HIPPO} is missing (shared data)")
    src = folder / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir(parents=True)
    (src / "unlabeled").mkdir(parents=True)
    for c in cases:
        shutil.copy(hippo_image(c), src / "images")
        shutil.copy(hippo_label(c), src / "labels")
    for c in unlabeled:
        shutil.copy(hippo_image(c), src / "unlabeled")
    shutil.copy(HIPPO / "dataset.json", src / "labels")
    data = folder / "data"
    store = open_datastore(data)
    import_paths(store, [src / "images"], labels_dir=src / "labels", author="reference")
    if unlabeled:
        import_paths(store, [src / "unlabeled"], author="reference")
    close = getattr(store, "close", None)
    if callable(close):
        close()
    return data


class Server:
    """One ``python -m segloop.cli serve`` process."""

    def __init__(self, data: Path, *args: str, host: str = "127.0.0.1", scheme: str = "http") -> None:
        self.data = data
        self.port = free_port()
        self.host = host
        self.url = f"{scheme}://{host}:{self.port}"
        self.api = f"{self.url}/api/v1"
        self.log_path = data.parent / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "segloop.cli", "serve", "--data", str(data), "--host", host,
               "--port", str(self.port), "--log-level", "warning", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait_ready(self, deadline_s: float = 120.0, verify: bool | str = True) -> Server:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api}/health", timeout=2, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def wait_job(client: httpx.Client, job_id: str, deadline_s: float = 300.0) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still active after {deadline_s}s")
