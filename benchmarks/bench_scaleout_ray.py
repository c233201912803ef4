"""Scale-out with jobs on Ray (issue 14, "Measured"): list/fetch latency on server A while server B
trains on a Ray cluster, and a Ray worker killed with SIGKILL during that training.

One run, all real: a private PostgreSQL cluster (scripts/postgres.sh, or ``--db URL``), one data
folder of Task04_Hippocampus cases, a Ray cluster on loopback (tests/scaleout/_ray_cluster.py: a
head and a worker node, one CPU each, separate ``ray start`` processes), and two ``segloop serve``
processes on that database and folder: A with ``--jobs 0`` (API only) and B with ``--jobs
ray://127.0.0.1:PORT`` (its jobs run as Ray tasks on the cluster).

1. **Version 1**: a tiny training (2 epochs) started through B's API runs on Ray to the end.
2. **Idle**: for ``--seconds``, one client on A loops over ``GET /images`` (list, 50 per page),
   ``GET /images/{id}/volume`` (fetch a volume) and ``GET /images/{id}/labels/{rev}`` (fetch a
   label); p50/p95 of each.
3. **Busy**: a second training of the same model (the same tiny network, 10 000 epochs: it lasts
   the window) is started through B's API; once it makes progress on a Ray worker, the same loop
   runs on A for ``--seconds``. Ratio busy / idle of each p95 (and p50). The training's steps
   during the window are reported, to show it really ran.
4. **Kill -9 of the Ray worker** running that training (its pid from the job's log): the job must
   end ``failed`` (or ``interrupted``) with a message naming the dead worker; the model's current
   version must still be 1, its versions [1], ``models/<name>/`` must hold only ``v0001.pt`` (no
   partial checkpoint registered); every image's label revisions (number, parent, voxels) must be
   what they were before the training; a save on A must still work, and B must still run a job on
   the cluster (an entropy score of one image with version 1).
5. **Idle after**: the loop of 2 again (the machine is shared: its background load changes).

Everything shares this machine's cores (2 here, with other people's work on them): the ratio is
an upper bound of what servers and Ray nodes on separate machines would see; the load average of
each phase is reported beside it.

Usage::

    .venv/bin/python benchmarks/bench_scaleout_ray.py --out benchmarks/results/scaleout-p95-ray.json
    .venv/bin/python benchmarks/bench_scaleout_ray.py --quick
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.integration._harness import TINY_TRAIN, Server, wait_job  # noqa: E402
from tests.scaleout._cluster import create_database, image_of_case, label_bytes, make_shared_data, save_label  # noqa: E402
from tests.scaleout._ray_cluster import RayCluster  # noqa: E402

from bench_scaleout import voxels_digest  # noqa: E402
from benchlib import (  # noqa: E402
    add_db_argument,
    loadavg,
    log,
    machine,
    ratio,
    start_postgres,
    start_ray,
    stop_postgres,
    summary_ms,
    timed_ms,
    utc_now,
    write_result,
)

MODEL = "bench"
LONG_TRAIN = {**TINY_TRAIN, "epochs": 10_000}  # lasts the busy window; ended by the kill


def label_snapshot(client: httpx.Client) -> dict[str, list[tuple[int, int | None, str]]]:
    """{image id: [(revision, parent, voxel digest), ...]} of every image in the store."""
    out: dict[str, list[tuple[int, int | None, str]]] = {}
    for image in client.get("/images", params={"limit": 1000}).json()["items"]:
        revs = []
        for rev in client.get(f"/images/{image['id']}/labels").json()["items"]:
            got = client.get(f"/images/{image['id']}/labels/{rev['revision']}")
            got.raise_for_status()
            revs.append((int(rev["revision"]), rev["parent"], voxels_digest(got.content)))
        out[image["id"]] = revs
    return out


def latency(client: httpx.Client, image_id: str, revision: int, seconds: float, min_n: int) -> dict[str, Any]:
    lists: list[float] = []
    volumes: list[float] = []
    labels: list[float] = []
    load0 = loadavg()
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lists) < min_n:
        lists.append(timed_ms(lambda: client.get("/images", params={"limit": 50}).raise_for_status()))
        volumes.append(timed_ms(lambda: client.get(f"/images/{image_id}/volume").raise_for_status()))
        labels.append(timed_ms(lambda: client.get(f"/images/{image_id}/labels/{revision}").raise_for_status()))
    return {"list_ms": summary_ms(lists), "volume_ms": summary_ms(volumes), "label_ms": summary_ms(labels),
            "seconds": seconds, "loadavg_start": load0, "loadavg_end": loadavg()}


def job_worker(client: httpx.Client, job_id: str) -> tuple[int, str] | None:
    """(pid, node) of the Ray worker running the job, from its log."""
    for entry in client.get(f"/jobs/{job_id}/log").json()["items"]:
        m = re.search(r"running on Ray node (\S+ \w+), worker pid (\d+)", entry["line"])
        if m:
            return int(m.group(2)), m.group(1)
    return None


def wait_training(client: httpx.Client, job_id: str, deadline_s: float = 180) -> tuple[dict[str, Any], int, str]:
    """Until the training has taken a step on a Ray worker: (job, worker pid, node)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            raise RuntimeError(f"training ended early: {job}")
        worker = job_worker(client, job_id)
        if worker and (job.get("detail") or {}).get("step"):
            return dict(job), worker[0], worker[1]
        time.sleep(0.3)
    raise RuntimeError("training did not make progress on Ray")


def model_files(data: Path) -> list[str]:
    folder = data / "models" / MODEL
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    add_db_argument(ap)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each latency phase (default 20)")
    ap.add_argument("--quick", action="store_true", help="5 s latency phases")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 5.0

    work = Path(tempfile.mkdtemp(prefix="segloop-bench-scaleout-ray-"))
    pg_dir = Path("/tmp") / f"segloop-bench-pg-{os.getpid()}"  # the postgres user must reach it
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="sgray-", dir="/tmp")))  # short: Ray's socket paths
    os.environ.update(cluster.env())  # the servers started below are Ray drivers
    servers: list[Server] = []
    try:
        url = create_database(start_postgres(args.db, pg_dir))
        data = make_shared_data(work, url)
        start_ray(cluster)
        common = ["--db", url, "--job-threads", "1", "--inference-threads", "1"]
        servers = [Server(data, *common, "--jobs", "0"), Server(data, *common, "--jobs", cluster.address)]
        for s in servers:
            s.wait_ready(deadline_s=180)
        result: dict[str, Any] = {
            "benchmark": "scaleout-ray",
            "started": utc_now(),
            "machine": machine(),
            "setup": "two segloop serve processes on one PostgreSQL database (scripts/postgres.sh) and one data "
                     "folder: A --jobs 0, B --jobs ray://127.0.0.1:PORT; a Ray cluster of a head and a worker "
                     "node (1 CPU each, loopback); all on this machine; Task04_Hippocampus cases",
            "train_config": LONG_TRAIN,
            "loadavg_at_start": loadavg(),
        }
        with httpx.Client(base_url=servers[0].api, timeout=300) as a, \
                httpx.Client(base_url=servers[1].api, timeout=300) as b:
            log("1. version 1: a tiny training through B, on Ray, to the end")
            t = time.perf_counter()
            r = b.post(f"/models/{MODEL}/train", json={"config": TINY_TRAIN})
            r.raise_for_status()
            v1 = wait_job(a, r.json()["id"], 600)
            if v1["state"] != "done":
                raise RuntimeError(f"the first training did not finish: {v1}")
            result["version_1"] = {"job": v1["id"], "state": v1["state"], "runner": v1["runner"],
                                   "seconds": round(time.perf_counter() - t, 1),
                                   "worker": job_worker(a, v1["id"])}
            model = a.get(f"/models/{MODEL}").json()
            assert model["current_version"] == 1, model

            probe = image_of_case(a, "003")
            revision = a.get(f"/images/{probe['id']}/labels").json()["items"][-1]["revision"]
            before = label_snapshot(a)
            log("2. idle: list / volume / label on A")
            latency(a, probe["id"], revision, 2.0, 10)  # warm-up (A's volume cache, connections)
            idle = latency(a, probe["id"], revision, args.seconds, 30)
            log(f"   {idle}")

            log("3. busy: the same on A while B trains version 2 on Ray")
            r = b.post(f"/models/{MODEL}/train", json={"config": LONG_TRAIN})
            r.raise_for_status()
            job_id = r.json()["id"]
            job0, pid, node = wait_training(b, job_id)
            busy = latency(a, probe["id"], revision, args.seconds, 30)
            job1 = b.get(f"/jobs/{job_id}").json()
            log(f"   {busy}")
            if job1["state"] != "running":
                raise RuntimeError(f"the training did not last the busy window: {job1}")

            log(f"4. kill -9 of the Ray worker running it (pid {pid}, node {node})")
            os.kill(pid, signal.SIGKILL)
            t = time.perf_counter()
            ended = wait_job(a, job_id, 180)
            to_end = time.perf_counter() - t
            model = a.get(f"/models/{MODEL}").json()
            after = label_snapshot(a)
            staging = sorted(p.name for p in (data / "staging").glob(f"{MODEL}-*.pt"))
            saved = save_label(a, probe["id"], label_bytes("003", shift=1), revision)
            r = b.post("/jobs", json={"kind": "score", "params": {"model": MODEL, "strategy": "entropy",
                                                          "image_ids": [probe["id"]]}})
            r.raise_for_status()
            score = wait_job(a, r.json()["id"], 300)
            kill = {
                "worker_pid": pid,
                "worker_node": node,
                "job_state": ended["state"],
                "job_error": ended["error"],
                "job_message": ended["message"],
                "seconds_kill_to_job_end": round(to_end, 2),
                "model_versions": [v["version"] for v in model["versions"]],
                "current_version": model["current_version"],
                "model_files": model_files(data),
                "staging_leftovers": staging,
                "label_revisions_intact": after == before,
                "label_revisions": {k: [r[0] for r in v] for k, v in after.items()},
                "save_on_a_after": {"status": saved.status_code,
                                    "revision": saved.json().get("revision") if saved.status_code == 201 else None},
                "score_job_on_b_after": {"state": score["state"], "result": score["result"]},
            }
            kill["ok"] = bool(
                kill["job_state"] in ("failed", "interrupted")
                and "died" in str(kill["job_error"])
                and kill["model_versions"] == [1] and kill["current_version"] == 1
                and kill["model_files"] == ["v0001.pt"]
                and kill["label_revisions_intact"]
                and saved.status_code == 201 and score["state"] == "done"
            )
            log(f"   {kill}")

            log("5. idle again")
            idle_after = latency(a, probe["id"], revision + 1, args.seconds, 30)
            log(f"   {idle_after}")

            def steps(job: dict[str, Any]) -> int:
                return int((job.get("detail") or {}).get("step") or 0)

            result["latency_on_a"] = {
                "idle": idle,
                "while_b_trains_on_ray": busy,
                "idle_after": idle_after,
                "training": {"job": job_id, "runner": job0["runner"], "worker_pid": pid, "ray_node": node,
                             "state_at_window_end": job1["state"],
                             "steps_during_window": steps(job1) - steps(job0),
                             "step_at_window_end": steps(job1)},
                "ratio_busy_vs_idle": {
                    what: {"p50": ratio(busy[what]["p50"], idle[what]["p50"]),
                           "p95": ratio(busy[what]["p95"], idle[what]["p95"])}
                    for what in ("list_ms", "volume_ms", "label_ms")
                },
                "note": "A, B, PostgreSQL and both Ray nodes share this machine's "
                        f"{os.cpu_count()} cores with other work: the ratio bounds what separate machines would see",
            }
            result["kill_ray_worker"] = kill
        print_table(result)
        write_result(result, args.out)
        return 0 if result["kill_ray_worker"]["ok"] else 1
    finally:
        for s in servers:
            s.stop()
        cluster.stop()
        stop_postgres(args.db, pg_dir)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(cluster.temp)], check=False, timeout=120)


def print_table(result: dict[str, Any]) -> None:
    lat = result["latency_on_a"]
    rows = [("idle", lat["idle"]), ("B trains on Ray", lat["while_b_trains_on_ray"]), ("idle after", lat["idle_after"])]
    log("")
    log(f"{'phase':<16} {'n':>5} {'list p50/p95 ms':>17} {'volume p50/p95 ms':>19} {'label p50/p95 ms':>18}  load 1m")
    for name, p in rows:
        cells = [f"{p[w]['p50']:.1f}/{p[w]['p95']:.1f}" for w in ("list_ms", "volume_ms", "label_ms")]
        log(f"{name:<16} {p['list_ms']['n']:>5} {cells[0]:>17} {cells[1]:>19} {cells[2]:>18}  "
            f"{p['loadavg_start'][0]:.1f}-{p['loadavg_end'][0]:.1f}")
    r = lat["ratio_busy_vs_idle"]
    log(f"{'ratio busy/idle':<16} {'':>5} {r['list_ms']['p50']:>7}/{r['list_ms']['p95']:<9} "
        f"{r['volume_ms']['p50']:>9}/{r['volume_ms']['p95']:<9} {r['label_ms']['p50']:>8}/{r['label_ms']['p95']:<9}")
    k = result["kill_ray_worker"]
    log(f"kill -9 of the Ray worker: job {k['job_state']} ({k['job_error']}), versions {k['model_versions']}, "
        f"current {k['current_version']}, files {k['model_files']}, labels intact {k['label_revisions_intact']}, "
        f"ok {k['ok']}")
    log("")


if __name__ == "__main__":
    raise SystemExit(main())
