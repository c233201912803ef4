"""What the processes of this machine are doing, from ``/proc`` (Linux): scheduling, CPU time,
who else is busy. Shared by the benchmarks that measure latency on shared cores
(bench_server, bench_click_priority), so their figures say what ran beside them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

POLICIES = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle"}


def stat_fields(stat: str) -> list[str]:
    """The fields of a ``/proc/PID/stat`` line after the command name (field 3 onwards)."""
    return stat[stat.rindex(")") + 2 :].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds used so far by a process (all threads)."""
    rest = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def thread_nices(pid: int) -> dict[str, int]:
    """How many threads of a process run at each nice value, e.g. ``{"0": 5, "10": 2}``."""
    nices: dict[str, int] = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            nice = stat_fields(t.joinpath("stat").read_text())[16]
        except OSError:
            continue
        nices[nice] = nices.get(nice, 0) + 1
    return nices


def proc_sched(pid: int) -> dict[str, Any] | None:
    """nice, scheduling policy and thread count of a process (from /proc; Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    rest = stat_fields(stat)
    threads = []
    for t in tasks:
        try:
            ts = t.joinpath("stat").read_text()
        except OSError:
            continue
        tr = stat_fields(ts)
        threads.append((int(tr[16]), POLICIES.get(int(tr[38]), tr[38])))
    return {
        "pid": pid,
        "cmd": cmd[-120:],
        "nice": int(rest[16]),
        "policy": POLICIES.get(int(rest[38]), rest[38]),
        "threads": int(rest[17]),
        "thread_sched": sorted({f"nice {n}, {p}" for n, p in threads}),
    }


def children_sched(parent: int) -> list[dict[str, Any]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = d.joinpath("stat").read_text()
        except OSError:
            continue
        if int(stat_fields(stat)[1]) == parent:
            info = proc_sched(int(d.name))
            if info is not None and "resource_tracker" not in info["cmd"]:
                out.append(info)
    return out


def cpu_times() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process (from /proc), with its command line."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = d.joinpath("stat").read_text()
            cmd = d.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat_fields(stat)
        out[int(d.name)] = (cmd[:100], (int(rest[11]) + int(rest[12])) / tick)
    return out


def others_busy(before: dict[int, tuple[str, float]], seconds: float, ours: set[int]) -> list[dict[str, Any]]:
    """Processes outside this benchmark that used more than 5% of a core since ``before``."""
    after = cpu_times()
    busy = []
    for pid, (cmd, t) in after.items():
        if pid in ours:
            continue
        used = t - before.get(pid, (cmd, 0.0))[1]
        if seconds > 0 and used / seconds > 0.05:
            busy.append({"pid": pid, "cmd": cmd, "cpu_share": round(used / seconds, 2)})
    return sorted(busy, key=lambda b: -b["cpu_share"])


def our_pids(root: int) -> set[int]:
    """``root`` and all its descendants."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = d.joinpath("stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat_fields(stat)[1])
    ours = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours
