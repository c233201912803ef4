"""State of the compatibility surface that segloop's own services do not keep.

- **Uploaded sessions** (MONAI Label's ``PUT /session/``): an image a client sent without adding
  it to the datastore, kept in memory until it expires (idle) or is deleted.
- **Implicit interactive sessions**: MONAI Label clients send *all* their clicks with every
  ``/infer`` request. To answer one more click at the cost of one click, the compat surface
  keeps, per (user, image, model version), a segloop `InteractiveSession` registered in the
  server's own `SessionManager` (so it counts against ``max_sessions``, expires like the others,
  and is closed when its image is deleted). This module only remembers which one belongs to
  which key, and evicts its own oldest when the manager is full.
- **Client info** (``PUT /datastore/image/info`` and ``/label/info``): free-form JSON clients
  attach to images and labels, kept in ``<data>/monailabel-info.json`` (written atomically).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segloop.imaging.volume import Volume

MAX_UPLOADED_SESSIONS = 16
MAX_IMPLICIT_SESSIONS = 4


@dataclass
class UploadedSession:
    id: str
    name: str
    volume: Volume
    owner: str
    expiry: float
    created: float = field(default_factory=time.time)
    last_access: float = field(default_factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.last_access > self.expiry

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": "",
            "image": self.name,
            "meta": {"shape": list(self.volume.shape), "spacing": list(self.volume.spacing), "owner": self.owner},
            "create_ts": int(self.created),
            "last_access_ts": int(self.last_access),
            "expiry": int(self.expiry),
            "expiry_ts": int(self.last_access + self.expiry),
        }


class CompatState:
    def __init__(self, data: Path) -> None:
        self.lock = threading.Lock()
        self.uploads: OrderedDict[str, UploadedSession] = OrderedDict()
        self.implicit: OrderedDict[tuple[str, str, str, int], str] = OrderedDict()
        self.info_path = Path(data) / "monailabel-info.json"
        self._info_lock = threading.Lock()

    # --- uploaded sessions ------------------------------------------------------------------
    def add_upload(self, name: str, volume: Volume, owner: str, expiry: float) -> UploadedSession:
        s = UploadedSession(secrets.token_hex(12), name, volume, owner, expiry)
        with self.lock:
            self._expire_uploads()
            self.uploads[s.id] = s
            while len(self.uploads) > MAX_UPLOADED_SESSIONS:
                self.uploads.popitem(last=False)
        return s

    def get_upload(self, session_id: str) -> UploadedSession | None:
        with self.lock:
            self._expire_uploads()
            s = self.uploads.get(session_id)
            if s is not None:
                s.last_access = time.time()
                self.uploads.move_to_end(session_id)
            return s

    def remove_upload(self, session_id: str) -> UploadedSession | None:
        with self.lock:
            return self.uploads.pop(session_id, None)

    def _expire_uploads(self) -> None:
        now = time.time()
        for sid in [k for k, s in self.uploads.items() if s.expired(now)]:
            self.uploads.pop(sid, None)

    # --- client info ------------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get_info(self, key: str) -> dict[str, Any]:
        value = self.read_info().get(key)
        return dict(value) if isinstance(value, dict) else {}

    def update_info(self, key: str, values: dict[str, Any]) -> dict[str, Any]:
        with self._info_lock:
            data = self.read_info()
            merged = {**(data.get(key) or {}), **values}
            data[key] = merged
            self.info_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.info_path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, default=str)
                os.replace(tmp, self.info_path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return merged


_create_lock = threading.Lock()


def compat_state(app_state: Any, data: Path) -> CompatState:
    """The app's `CompatState`, created on first use."""
    cs = getattr(app_state, "monailabel", None)
    if cs is None:
        with _create_lock:
            cs = getattr(app_state, "monailabel", None)
            if cs is None:
                cs = CompatState(data)
                app_state.monailabel = cs
    assert isinstance(cs, CompatState)
    return cs
