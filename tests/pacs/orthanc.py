"""A throw-away Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for integration tests.

`OrthancServer` writes a config into its own temporary folder (storage, index, config), with
HTTP authentication on and one test user, DICOMweb enabled, the DICOM (C-STORE) listener off,
remote access refused, and starts ``Orthanc`` on a free loopback port. `stop` terminates the
process it started (by its id) and removes the folder. ``scripts/orthanc.sh install`` installs
the Debian packages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from segloop.server.settings import ServerSettings

DICOMWEB_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER = "segloop-test"


def find_orthanc() -> str | None:
    """The Orthanc executable, or None when the Debian package is not installed."""
    return shutil.which("Orthanc") or (
        str(Path("/usr/sbin/Orthanc")) if Path("/usr/sbin/Orthanc").exists() else None
    )


def find_dicomweb_plugin() -> Path | None:
    for folder in DICOMWEB_PLUGIN_DIRS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """One Orthanc process with its own storage; use as a context manager or call start/stop."""

    def __init__(self, password: str | None = None, folder: Path | None = None) -> None:
        self.password = password or os.urandom(9).hex()
        self.user = USER
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder or Path(tempfile.mkdtemp(prefix="segloop-orthanc-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def segloop_settings(self, data: Path) -> ServerSettings:
        """A segloop server on the data folder ``data`` whose images come from this Orthanc
        (jobs in threads: the in-process test apps)."""
        return ServerSettings(data=data, job_mode="thread", dicomweb_url=self.dicomweb_url, dicomweb_auth=self.auth)

    def _config(self, plugin: Path) -> dict[str, object]:
        return {
            "Name": "segloop-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [str(plugin)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "Host": "127.0.0.1",
                "Ssl": False,
            },
            "SaveJobs": False,
            "MaximumStorageCacheSize": 0,  # read instances from disk (tests remove files)
            "StableAge": 1,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
        }

    def start(self, timeout: float = 60.0, *, same_port: bool = False) -> OrthancServer:
        exe, plugin = find_orthanc(), find_dicomweb_plugin()
        if exe is None or plugin is None:
            raise RuntimeError(
                "Orthanc or its DICOMweb plugin is not installed: run scripts/orthanc.sh install"
            )
        for attempt in range(3):
            if not (same_port and self.port):
                self.port = free_port()
            config = self.folder / "orthanc.json"
            config.write_text(json.dumps(self._config(plugin), indent=2))
            log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the child
            self.process = subprocess.Popen(
                [exe, "--logdir=" + str(self.folder), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # port taken between free_port() and bind, or a config error: retry
                try:
                    r = requests.get(f"{self.url}/system", auth=self.auth, timeout=2)
                    if r.status_code == 200:
                        return self
                except requests.ConnectionError:
                    pass
                time.sleep(0.2)
            self._terminate()
            if attempt == 2:
                tail = (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc did not start on port {self.port}:\n{tail}")
        raise RuntimeError("Orthanc did not start")

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self.thaw()
        self._terminate()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- faults for the tests: the PACS goes away and comes back ------------------------------

    def pause(self) -> None:
        """Stop the process, keep storage, index and port: connections are refused."""
        self.thaw()
        self._terminate()

    def resume(self) -> OrthancServer:
        """Start again on the same port with the same storage (after `pause`)."""
        return self.start(same_port=True)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung PACS)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if getattr(self, "_frozen", False) and self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
        self._frozen = False

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
