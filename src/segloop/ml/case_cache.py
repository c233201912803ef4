"""An in-process cache of pre-processed training images (normalised, resampled to the model grid).

The active-learning loop fine-tunes the shared model after every round on every label saved so
far, so the same images are read, normalised and resampled again and again; on whole-brain MR
(256x256x160) that is about a second per image and round. Images are immutable in the store (an
image id never changes its voxels; labels are separate revisions), so the pre-processed array is
keyed by the store, the image id, its creation time and the model spacing, and kept in a bounded
least-recently-used cache. The label part is not cached: revisions are cheap to read and a new
revision would need its own entry anyway.

``SEGLOOP_CASE_CACHE_MB`` sets the bound (default 1024 MB; 0 turns the cache off).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

DEFAULT_MB = 1024


class ArrayCache:
    """A thread-safe LRU cache of numpy arrays bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return arr

    def put(self, key: Hashable, array: np.ndarray) -> None:
        size = int(array.nbytes)
        if size > self.max_bytes:
            return
        array.setflags(write=False)  # shared between trainings: nobody may change it in place
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= int(old.nbytes)
            self._items[key] = array
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= int(dropped.nbytes)

    def has_prefix(self, prefix: tuple[Hashable, ...]) -> bool:
        """Whether some key (a tuple) starts with ``prefix``."""
        n = len(prefix)
        with self._lock:
            return any(isinstance(k, tuple) and k[:n] == prefix for k in self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _limit() -> int:
    try:
        mb = float(os.environ.get("SEGLOOP_CASE_CACHE_MB", DEFAULT_MB))
    except ValueError:
        mb = DEFAULT_MB
    return int(mb * 1024 * 1024)


IMAGES = ArrayCache(_limit())
# Per label revision on a model grid: (structure, share in its largest piece) rows for the
# post-processing decision (`segloop.ml.postprocess.label_shares`; revisions never change, and a
# whole-brain label takes ~0.3 s to measure). A few bytes each.
LABEL_SHARES = ArrayCache(4 * 1024 * 1024)
