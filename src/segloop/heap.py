"""Giving freed heap memory back to the operating system between the phases of long runs.

glibc's ``malloc`` serves allocations below its mmap threshold from heap arenas. The threshold
starts at 128 KiB and rises (up to 32 MiB) each time a larger mmapped block is freed, so after the
first training steps most of torch's and numpy's intermediate arrays (patches, feature maps,
probability crops of 1-30 MB) come from the arenas. When a phase ends (a training, a scoring or an
evaluation pass over whole volumes), those arrays are freed, but the arenas keep the pages: free
chunks between live ones are not returned, and the next phase, with other sizes, grows the heap
again. In a short ``segloop emulate`` on 256x256x160 volumes 0.4-0.6 GB of the heap was free but
resident this way (mallinfo2, 2026-12-06; docs/emulation/README.md).

`release_free_heap` asks glibc to return every whole free page of every arena (``malloc_trim(0)``:
10-20 ms for a GB of heap). Long-running commands call it where a phase has just freed its arrays;
elsewhere (another C library, another system) it does nothing. Loops over images throttle it
(``min_interval``), so small volumes do not pay a trim per image. A fixed, lower mmap threshold
(``M_MMAP_THRESHOLD``) would bound the heap too, but every mid-sized array would then be a fresh
mapping whose pages are zeroed on first touch: with 256 KiB, pre-training took 139 s instead of
101 s in the same probe.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # musl has no malloc_trim


_last_release = 0.0


def release_free_heap(min_interval: float = 0.0) -> bool:
    """Return the heap's free pages to the operating system (glibc ``malloc_trim(0)``); returns
    whether anything was released (``False`` also where the C library has no such call).

    ``min_interval``: seconds since the last release under which this call does nothing. Loops
    over images pass 1 s, so on small volumes (a tenth of a second an image) the trims cost at
    most ~1.5 % of the loop, and on large ones (seconds an image) every image is followed by one.
    """
    global _last_release
    libc = _glibc()
    if libc is None:
        return False
    now = time.monotonic()
    if min_interval > 0 and now - _last_release < min_interval:
        return False
    _last_release = now
    return bool(libc.malloc_trim(0))
