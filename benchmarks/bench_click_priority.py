"""Click latency of a real ``segloop serve`` process while a normal-priority process keeps the CPU
busy, for several inference-pool settings in one run.

Why: the server's inference worker runs at a lower priority (nice) so that listing and
downloads stay fast during inference, and torch's OpenMP threads started from it inherit that
nice. With two or more low-priority OpenMP threads and other busy processes on the machine, a
parallel region waits at its barriers for a thread the scheduler has put aside: a click that
takes ~25 ms alone took ~300 ms on a 2-core machine with one busy neighbour. The in-process click
benchmark (`bench_server.py --only click`) does not show it; this one runs real server processes.

What it does:

1. Builds the data of `bench_server.py` (hippocampus cases + a 256x256x128 volume) and trains a
   first tiny model version (set-up, not measured).
2. Starts one ``segloop serve`` process per configuration (all at once, on loopback ports) and
   opens an interactive session on the big volume in each.
3. Starts its own competitor: ``--competitors`` processes running a busy Python loop at normal
   priority (so the condition does not depend on what else runs; other busy processes are
   listed in the output).
4. Clicks: round after round, one click per configuration (the order rotates every round), so
   background noise hits all alike. Reported per configuration: HTTP round trip p50/p95, the
   server's own click compute (Server-Timing ``click``), the server process's CPU time per click
   (spinning OpenMP threads show up here), and the load average.
5. Responsiveness during inference (why the nice exists): for each configuration, clicks run
   back to back in a thread while this thread lists images and fetches the volume; p50/p95 of
   those requests.

Result (benchmarks/results/click-priority.json; 2 cores, the competitor + an emulation run, load
average ~4): click p50 old default (nice 10, OpenMP spinning) 1532 ms, nice 10 + 1 thread 304 ms,
nice 10 + passive 289 ms, new default (nice 5 + passive) 139 ms, nice 0 + passive 82 ms; list and
volume requests during back-to-back clicks the same for all (p50 16-18 / 7-8 ms).

Usage::

    .venv/bin/python benchmarks/bench_click_priority.py --out benchmarks/results/click-priority.json
    .venv/bin/python benchmarks/bench_click_priority.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import BIG_SHAPE, ROOT, build_data, train_first  # noqa: E402
from benchlib import base_result, free_port, pct, write_json  # noqa: E402
from procstat import cpu_times as all_cpu_times  # noqa: E402
from procstat import others_busy, our_pids, proc_cpu, thread_nices  # noqa: E402

# key -> (description, extra serve flags, extra environment). GOMP_SPINCOUNT=300000 is libgomp's
# own default (spin ~3 ms before sleeping): set, it keeps `segloop serve` from choosing the passive
# wait policy, i.e. it gives the server as it was before.
SPIN = {"GOMP_SPINCOUNT": "300000"}
CONFIGS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "old": ("old default: nice 10, spin", ["--inference-nice", "10"], SPIN),
    "t1": ("nice 10, 1 thread, spin", ["--inference-nice", "10", "--inference-threads", "1"], SPIN),
    "nice0": ("nice 0, spin", ["--inference-nice", "0"], SPIN),
    "p10": ("nice 10, passive", ["--inference-nice", "10"], {}),
    "new": ("new default: nice 5, passive", [], {}),
    "p0": ("nice 0, passive", ["--inference-nice", "0"], {}),
}
DEFAULT_CONFIGS = "old,t1,p10,new,p0"

BUSY_LOOP = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


class Server:
    def __init__(self, name: str, data: Path, flags: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        self.log = open(log, "wb")  # noqa: SIM115
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("SEGLOOP_INFERENCE_NICE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segloop.cli", "serve", "--data", str(data), "--port", str(self.port),
             "--log-level", "warning", "--job-threads", "1", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**clean, **env},
        )
        self.client: httpx.Client | None = None
        self.session = ""

    def wait(self) -> None:
        for _ in range(900):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: server exited ({self.proc.returncode}); see its log")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    self.client = httpx.Client(base_url=self.api, timeout=600)
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name}: server did not start")

    def open_session(self, image_id: str) -> None:
        assert self.client is not None
        r = self.client.post("/sessions", json={"image_id": image_id, "model": "bench", "version": 1})
        assert r.status_code == 201, r.text
        self.session = r.json()["id"]

    def click(self, n: int, point: list[int]) -> dict[str, float]:
        assert self.client is not None
        cpu0 = proc_cpu(self.proc.pid)
        t0 = time.perf_counter()
        r = self.client.post(f"/sessions/{self.session}/clicks", json={"clicks": [{"class": 1 + n % 2, "points": [point]}]})
        dt = time.perf_counter() - t0
        assert r.status_code == 200 and len(r.content) > 100, r.text
        out = {"http": dt, "cpu": proc_cpu(self.proc.pid) - cpu0}
        for part in r.headers.get("server-timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if dur:
                out[name] = float(dur) / 1e3
        return out

    def threads(self) -> dict[str, Any]:
        """nice values of the server's threads (from /proc), e.g. {"0": 5, "10": 2}."""
        return dict(thread_nices(self.proc.pid))

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 50) * 1e3, "p95_ms": pct(values, 95) * 1e3, "n": len(values)}


def responsiveness(server: Server, big_id: str, points: list[list[int]], seconds: float) -> dict[str, Any]:
    """List and volume requests while clicks run back to back on ``server``."""
    assert server.client is not None
    stop = threading.Event()
    clicks: list[float] = []

    def clicker() -> None:
        n = 0
        while not stop.is_set():
            clicks.append(server.click(n, points[n % len(points)])["http"])
            n += 1

    thread = threading.Thread(target=clicker, daemon=True)
    thread.start()
    time.sleep(0.3)
    lists, volumes = [], []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        assert server.client.get("/images", params={"limit": 100}).status_code == 200
        lists.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert len(server.client.get(f"/images/{big_id}/volume").content) > 1_000_000
        volumes.append(time.perf_counter() - t0)
        time.sleep(0.05)
    stop.set()
    thread.join()
    return {"list": stats(lists), "volume": stats(volumes), "clicks_meanwhile": len(clicks),
            "loadavg": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="clicks per configuration")
    ap.add_argument("--competitors", type=int, default=1, help="busy normal-priority processes started here")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help=f"comma-separated configurations to compare, of {','.join(CONFIGS)} (default {DEFAULT_CONFIGS})")
    ap.add_argument("--responsiveness-seconds", type=float, default=6.0,
                    help="per configuration: list/volume requests during back-to-back clicks (0: skip)")
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.responsiveness_seconds = 5, 2.0
    configs = {k: CONFIGS[k] for k in args.configs.split(",")}

    work = Path(tempfile.mkdtemp(prefix="bench-click-priority-"))
    big_id = "big_256x256x128"
    results: dict[str, Any] = {
        **base_result(),
        "volume_shape": list(BIG_SHAPE),
        "competitors": args.competitors,
    }
    servers: list[Server] = []
    busy: list[subprocess.Popen[bytes]] = []
    try:
        print("preparing data and a first model version ...", file=sys.stderr)
        data = build_data(work)
        t0 = time.monotonic()
        train_first(data)
        results["setup_training_seconds"] = round(time.monotonic() - t0, 1)
        for key, (_, flags, env) in configs.items():
            servers.append(Server(key, data, flags, env, work / f"server-{key}.log"))
        for s in servers:
            s.wait()
            s.open_session(big_id)
        rng = np.random.default_rng(0)
        points = [[int(rng.integers(16, d - 16)) for d in BIG_SHAPE] for _ in range(args.rounds + 2)]
        for s in servers:  # warm-up click each
            s.click(0, points[0])
        print(f"competitors: {args.competitors} busy process(es); clicking ...", file=sys.stderr)
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.competitors)]
        time.sleep(2.0)
        samples: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
        loads = []
        cpu0, t0 = all_cpu_times(), time.monotonic()
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[: r % len(servers)]
            for s in order:
                samples[s.name].append(s.click(r + 1, points[r + 1]))
                time.sleep(0.05)
            loads.append(os.getloadavg()[0])
        results["others_busy_during_clicks"] = others_busy(cpu0, time.monotonic() - t0, our_pids(os.getpid()))
        results["loadavg_during_clicks"] = {"min": min(loads), "max": max(loads), "mean": sum(loads) / len(loads)}
        table: dict[str, Any] = {}
        for s in servers:
            v = samples[s.name]
            table[s.name] = {
                "description": configs[s.name][0],
                "flags": configs[s.name][1],
                "env": configs[s.name][2],
                "thread_nices": s.threads(),
                "http": stats([x["http"] for x in v]),
                "click_compute": stats([x.get("click", float("nan")) for x in v]),
                "encode_p50_ms": pct([x.get("encode", float("nan")) for x in v], 50) * 1e3,
                "server_cpu_per_click_p50_ms": pct([x["cpu"] for x in v], 50) * 1e3,
                "http_min_ms": min(x["http"] for x in v) * 1e3,
            }
        results["clicks"] = table
        if args.responsiveness_seconds > 0:
            resp = {}
            for s in servers:
                print(f"responsiveness during clicks: {s.name} ...", file=sys.stderr)
                resp[s.name] = responsiveness(s, big_id, points, args.responsiveness_seconds)
            results["responsiveness_during_clicks"] = resp
    finally:
        for b in busy:
            b.terminate()
            b.wait()
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    la = results["loadavg_during_clicks"]
    print(f"\nclick latency through `segloop serve` ({results['machine']['cpus']} CPUs, {args.competitors} busy "
          f"competitor(s) + whatever else runs; load average {la['min']:.2f}-{la['max']:.2f} during the clicks); "
          f"volume {BIG_SHAPE}, {args.rounds} clicks each, interleaved")
    print(f"{'configuration':<34}{'p50':>8}{'p95':>8}{'min':>8}{'compute':>9}{'cpu/click':>10}  thread nices")
    for name, t in results["clicks"].items():
        print(f"{name + ': ' + t['description']:<34}{t['http']['p50_ms']:>6.0f}ms{t['http']['p95_ms']:>6.0f}ms{t['http_min_ms']:>6.0f}ms"
              f"{t['click_compute']['p50_ms']:>7.0f}ms{t['server_cpu_per_click_p50_ms']:>8.0f}ms  {t['thread_nices']}")
    during = results.get("responsiveness_during_clicks")
    if during:
        print("\nduring back-to-back clicks:")
        print(f"{'configuration':<34}{'list p50':>9}{'p95':>8}{'volume p50':>11}{'p95':>8}{'clicks':>7}")
        for name, row in during.items():
            print(f"{name + ': ' + configs[name][0]:<34}{row['list']['p50_ms']:>7.1f}ms{row['list']['p95_ms']:>6.1f}ms{row['volume']['p50_ms']:>9.1f}ms"
                  f"{row['volume']['p95_ms']:>6.1f}ms{row['clicks_meanwhile']:>7}")
    for b in results["others_busy_during_clicks"]:
        print(f"  not ours, busy during the clicks: {b['cpu_share']:.2f} core  {b['cmd'][:80]}")
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
