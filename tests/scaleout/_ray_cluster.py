"""A real Ray cluster on loopback for tests/scaleout/test_ray_*.py and benchmarks/bench_ray.py:
a head and worker nodes, each a ``ray start`` process (one CPU each by default) in a session of its
own, so that they are stopped by their process groups: ``ray stop`` would stop every Ray on the
machine, other people's included."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RAY_BIN = Path(sys.executable).with_name("ray")
START_TIMEOUT = 90.0


# --- a real cluster ----------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _node_ports() -> list[str]:
    """Fixed-by-default ports of a node, made private so that another Ray on the machine does not clash."""
    agent, agent_grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(6)
    return [
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
    ]


class RayCluster:
    def __init__(self, temp: Path, cpus: int = 1) -> None:
        self.temp = temp
        self.cpus = cpus
        self.groups: list[int] = []
        self.gcs_port, self.client_port = _free_ports(2)

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def env(self) -> dict[str, str]:
        """No usage reports, and no token authentication (Ray 2.60 turns it on when it finds a token
        in ~/.ray, e.g. one left by a local ``ray.init``): the same for the nodes and the drivers."""
        return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_AUTH_TOKEN_PATH": str(self.temp / "no-token")}

    def _start(self, args: list[str]) -> None:
        env = dict(os.environ, **self.env())
        proc = subprocess.Popen(
            [str(RAY_BIN), "start", *args, "--num-cpus", str(self.cpus), "--node-ip-address", "127.0.0.1",
             "--disable-usage-stats", *_node_ports()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True,  # its daemons stay in this process group: stopped by it
        )
        self.groups.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"ray start did not finish in {START_TIMEOUT}s:\n{out[-3000:]}") from None
        assert proc.returncode == 0, f"ray start failed:\n{out[-3000:]}"

    def start(self, workers: int = 1) -> None:
        """The head, then ``workers`` worker nodes (one CPU each, like the head)."""
        self._start(["--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(self.client_port),
                     "--temp-dir", str(self.temp), "--include-dashboard=false"])
        for _ in range(workers):
            self._start(["--address", f"127.0.0.1:{self.gcs_port}"])

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = []
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
                    alive.append(pgid)
            end = time.monotonic() + wait
            while alive and time.monotonic() < end:
                alive = [g for g in alive if _group_alive(g)]
                time.sleep(0.2)
            if not alive:
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies (already dead, not yet reaped by init) still count for killpg: look at their state
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# --- jobs on it --------------------------------------------------------------------------------
def train_params(**config: Any) -> dict[str, Any]:
    """A train job's parameters: model "tiny" with `tiny_train_config` and these changes."""
    from tests.unit.al_synthetic import tiny_train_config

    return {"model": "tiny", "config": tiny_train_config(**config).to_dict(), "device": "cpu"}


def model_versions(store: Any) -> list[int]:
    try:
        model = store.get_model("tiny")
    except Exception:
        return []
    return [v.version for v in model.versions]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def worker_pid(runner: Any, job_id: str) -> int | None:
    for entry in runner.db.log(job_id):
        m = re.search(r"running on Ray node .* worker pid (\d+)", entry["line"])
        if m:
            return int(m.group(1))
    return None


