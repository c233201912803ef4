"""OpenMP's wait policy for torch's threads (libgomp), set before torch loads."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping


def prefer_passive_openmp(environ: MutableMapping[str, str] | None = None) -> bool:
    """Make OpenMP threads sleep at once when they wait (``OMP_WAIT_POLICY=PASSIVE``) instead of
    spinning ~3 ms at every barrier (libgomp's default), unless ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` is already set. libgomp reads these when it loads, so this must run before
    torch is imported (every ``segloop`` command calls it first); returns whether it set the policy.

    Why: the inference pool's threads run at nice 10 and torch's OpenMP team started from them
    inherits it. When other processes keep the cores busy, a spinning low-priority thread burns
    the CPU share its descheduled partner needs to reach the barrier: a click on 256x256x128 then
    took 7x the CPU and ~4x the time of a single-threaded one (benchmarks/bench_click_priority.py).
    Child processes (jobs) inherit the policy; their teams run at nice 10 / SCHED_IDLE as well.
    The same holds at normal priority whenever the cores are shared: a training step of the
    planned network (UNet 16-128, batch 2 of 72x72x48, 2 threads) took 25-40 s with spinning and
    5-7 s with ``PASSIVE`` at a load of 7 on 2 cores (2026-12-05; one thread: 5-8 s), which made
    ``segloop emulate``'s calibrated estimate on a large dataset 804 instead of ~30 minutes.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    if environ is None and "torch" in sys.modules:
        return False  # too late: libgomp has read the environment
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
