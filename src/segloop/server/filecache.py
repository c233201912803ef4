"""Image files served from memory: the bytes of recently fetched files, bounded, checked against
the file on every hit.

Why: a volume fetch is the call the viewer waits for. Starlette's `FileResponse` reads a file in
64 KiB chunks, each through the thread pool, and every hop needs the GIL, which a busy inference
thread holds often: under load a 2 MB volume became dozens of waits. A hit here is one ``stat``
on the event loop and one send; a miss reads the whole file in one thread-pool call.

Entries are keyed by image id and validated by the file's path, size and modification time
(``st_mtime_ns``), so a replaced or deleted file is never served stale; the least recently used
entries go when ``max_bytes`` would be exceeded; files larger than ``max_bytes / 4`` are not kept.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int
    mtime_ns: int
    data: bytes


class FileBytesCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._items: OrderedDict[str, CachedFile] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CachedFile | None:
        """The cached file of ``key`` if it is still the file on disk (one ``stat``), else None."""
        with self._lock:
            item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        try:
            st = os.stat(item.path)
        except OSError:
            self.forget(key)
            self.misses += 1
            return None
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns:
            self.forget(key)
            self.misses += 1
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
        self.hits += 1
        return item

    def load(self, key: str, path: Path) -> CachedFile:
        """Read ``path`` whole (blocking: call it from a worker thread) and keep it when it fits."""
        path = Path(path)
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
        item = CachedFile(path, st.st_size, st.st_mtime_ns, data)
        if len(data) <= self.max_bytes // 4:
            with self._lock:
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= len(old.data)
                self._items[key] = item
                self._bytes += len(data)
                while self._bytes > self.max_bytes and self._items:
                    _, gone = self._items.popitem(last=False)
                    self._bytes -= len(gone.data)
        return item

    def forget(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes
