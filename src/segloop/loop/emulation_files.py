"""Files and machine load of an emulation: atomic JSON/bytes writes (a run is resumable, so a
half-written file must never be read back) and the CPU figures each round records.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


@dataclass(frozen=True)
class CpuSnapshot:
    """Wall clock, the machine's busy CPU seconds (None where ``/proc/stat`` is missing) and this process's."""

    wall: float
    machine_busy: float | None
    own: float

    @classmethod
    def now(cls) -> CpuSnapshot:
        busy: float | None = None
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
            vals = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
            busy = (sum(vals) - vals[3] - vals[4]) / float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            busy = None
        t = os.times()
        return cls(time.monotonic(), busy, t.user + t.system)


def cpu_usage(start: CpuSnapshot, end: CpuSnapshot | None = None) -> dict[str, Any]:
    """Cores used on average between two snapshots: by this process and by everything else."""
    end = end or CpuSnapshot.now()
    wall = max(end.wall - start.wall, 1e-9)
    own = (end.own - start.own) / wall
    other = None
    if start.machine_busy is not None and end.machine_busy is not None:
        other = max(0.0, (end.machine_busy - start.machine_busy) / wall - own)
    try:
        load = float(os.getloadavg()[0])
    except OSError:
        load = None
    return {"own_cores": round(own, 3), "other_cores": None if other is None else round(other, 3), "load_1min": load}


def machine_info() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}
