"""Kill -9 of a Ray worker during a training, on the scale-out deployment (issue 14): two
``segloop serve`` processes on one PostgreSQL store (A ``--jobs 0``, B ``--jobs ray://...``) and a
real Ray cluster (a head and a worker node on loopback).

Version 1 is trained to the end; a second training of the same model is started, and the Ray
worker process running it is killed with SIGKILL. The job must end failed with a message naming
the dead worker, the model's current version must still be 1 with no other version and no other
checkpoint file under ``models/``, every label revision must be as before, and both the store
(a save on A) and the cluster (a job on B) must keep working.

tests/scaleout/test_ray_jobs.py kills a worker under a bare `JobRunner` on a SQLite folder; this
one checks the store through the other server, on PostgreSQL, as deployed."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.integration._harness import TINY_TRAIN, Server, wait_job
from tests.scaleout._cluster import image_of_case, label_bytes, make_shared_data, save_label
from tests.scaleout._ray_cluster import RayCluster, wait_until

MODEL = "killed"
# the tiny network on 32³ patches, 1 step per epoch: version 1 is quick, the second lasts
ONE_EPOCH = {**TINY_TRAIN, "epochs": 1, "steps_per_epoch": 1}
LONG = {**TINY_TRAIN, "epochs": 10_000, "steps_per_epoch": 1}


def _labels(client: httpx.Client) -> dict[str, list[tuple[int, int | None, bytes]]]:
    """{image id: [(revision, parent, file bytes)]} of every image."""
    out: dict[str, list[tuple[int, int | None, bytes]]] = {}
    for image in client.get("/images", params={"limit": 1000}).json()["items"]:
        revs = []
        for rev in client.get(f"/images/{image['id']}/labels").json()["items"]:
            got = client.get(f"/images/{image['id']}/labels/{rev['revision']}")
            assert got.status_code == 200, got.text
            revs.append((int(rev["revision"]), rev["parent"], got.content))
        out[image["id"]] = revs
    return out


def _worker_pid(client: httpx.Client, job_id: str) -> int | None:
    for entry in client.get(f"/jobs/{job_id}/log").json()["items"]:
        m = re.search(r"running on Ray node .* worker pid (\d+)", entry["line"])
        if m:
            return int(m.group(1))
    return None


def test_kill_9_of_the_ray_worker_keeps_the_store_and_the_last_model(
    ray_cluster: RayCluster, pg_url: str, tmp_path: Path
) -> None:
    data = make_shared_data(tmp_path, pg_url, cases=("001", "003", "004"))
    common = ("--db", pg_url, "--job-threads", "1", "--inference-threads", "1")
    servers = [Server(data, *common, "--jobs", "0"), Server(data, *common, "--jobs", ray_cluster.address)]
    try:
        for s in servers:
            s.wait_ready(deadline_s=180)
        with httpx.Client(base_url=servers[0].api, timeout=60) as a, \
                httpx.Client(base_url=servers[1].api, timeout=60) as b:
            r = b.post(f"/models/{MODEL}/train", json={"config": ONE_EPOCH})
            assert r.status_code == 202, r.text
            first = wait_job(a, r.json()["id"], 240)
            assert first["state"] == "done", first
            assert a.get(f"/models/{MODEL}").json()["current_version"] == 1
            before = _labels(a)

            r = b.post(f"/models/{MODEL}/train", json={"config": LONG})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def stepping() -> bool:
                job: dict[str, Any] = a.get(f"/jobs/{job_id}").json()
                assert job["state"] in ("queued", "running"), job
                return bool((job.get("detail") or {}).get("step")) and _worker_pid(a, job_id) is not None

            wait_until(stepping, 180, "the second training to take a step on a Ray worker")
            pid = _worker_pid(a, job_id)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            ended = wait_job(a, job_id, 120)
            assert ended["state"] in ("failed", "interrupted"), ended
            assert "Ray worker running the job died" in str(ended["error"]), ended

            model = a.get(f"/models/{MODEL}").json()
            assert model["current_version"] == 1, model
            assert [v["version"] for v in model["versions"]] == [1], model
            assert model["training_job"] is None, model
            assert sorted(p.name for p in (data / "models" / MODEL).iterdir()) == ["v0001.pt"]
            assert _labels(a) == before

            # the store still takes writes and the cluster still runs jobs
            image = image_of_case(a, "003")
            latest = before[image["id"]][-1][0]
            saved = save_label(a, image["id"], label_bytes("003", shift=1), latest)
            assert saved.status_code == 201 and saved.json()["revision"] == latest + 1, saved.text
            r = b.post("/jobs", json={"kind": "score", "params": {"model": MODEL, "strategy": "entropy",
                                                              "image_ids": [image["id"]]}})
            assert r.status_code == 202, r.text
            scored = wait_job(a, r.json()["id"], 180)
            assert scored["state"] == "done", (scored["error"], a.get(f"/jobs/{scored['id']}/log").json()["items"][-8:])
            assert scored["result"]["scored"] == 1 and scored["result"]["version"] == 1, scored
            assert a.get(f"/models/{MODEL}").json()["current_version"] == 1
    finally:
        for s in servers:
            s.stop()
