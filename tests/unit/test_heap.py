"""`segloop.heap.release_free_heap`: freed heap memory goes back to the operating system."""

from __future__ import annotations

from pathlib import Path

from segloop import heap


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_release_free_heap_returns_the_pages_of_freed_chunks() -> None:
    if heap._glibc() is None:  # another C library: nothing to call, and it says so
        assert heap.release_free_heap() is False
        return
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one stays, so the
    # freed ones lie below it and glibc's own trimming of the heap's top cannot return them
    blocks = [b"\x01" * 65536 for _ in range(3000)]
    keep = blocks[-1]
    del blocks
    before = _rss_mb()
    assert heap.release_free_heap() is True
    after = _rss_mb()
    assert before - after > 100, (before, after)  # ~190 MB were freed
    assert keep[0] == 1
