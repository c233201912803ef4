"""Scale-out benchmark: two real ``segloop serve`` processes on one PostgreSQL store (issue 14).

Measured in one run, on a private PostgreSQL cluster started by scripts/postgres.sh (or
``--db URL``) and one data folder of Task04_Hippocampus cases shared by both servers:

1. **Same base, no retry**: 20 concurrent savers, 10 per server, all save a different label on
   the same base revision of one image (released together by a barrier). Counted: saved (201),
   stale (409), other answers, and *lost* = a 201 whose revision is not in the store afterwards
   with exactly the voxels that saver sent. Expected: 1 saved, 19 stale, 0 lost.
2. **Retry on 409**: 20 concurrent savers that take the 409's ``current_revision`` as their new
   base and try again. Expected: 20 distinct revisions, consecutive, each the parent of the next
   (in order), none lost; the retries it took are reported.
3. **List/fetch latency on A while B trains**: p50/p95 of ``GET /images`` (list) and
   ``GET /images/{id}/volume`` (fetch) on server A, idle, then while server B runs a training
   job (A is started with ``--jobs 0`` so the training cannot land on A); ratio loaded / idle.
   Idle is measured again after the training is cancelled (``idle_after``): on a shared machine
   the background changes between phases. Both servers and PostgreSQL share this machine's
   cores, so the ratio is an upper bound of what separate machines would see; the machine's load
   average is reported beside it.

Usage::

    .venv/bin/python benchmarks/bench_scaleout.py --out benchmarks/results/scaleout.json
    .venv/bin/python benchmarks/bench_scaleout.py --quick
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.integration._harness import TINY_TRAIN, Server  # noqa: E402
from tests.scaleout._cluster import (  # noqa: E402
    create_database,
    image_of_case,
    label_bytes,
    make_shared_data,
    save_label,
)

from benchlib import (  # noqa: E402
    add_db_argument,
    loadavg,
    log,
    machine,
    pct,
    ratio,
    start_postgres,
    stop_postgres,
    timed_ms,
    utc_now,
    write_result,
)

TRAIN = {**TINY_TRAIN, "epochs": 10_000}  # runs until cancelled at the end of the loaded phase


def voxels_digest(body: bytes) -> str:
    """Digest of a gzip NIfTI label's voxels (what a saver sent vs what the store holds)."""
    img = nib.Nifti1Image.from_bytes(gzip.decompress(body))
    return hashlib.sha256(np.ascontiguousarray(np.asarray(img.dataobj).astype(np.uint8)).tobytes()).hexdigest()


def stored_digests(client: httpx.Client, image_id: str) -> dict[int, tuple[int | None, str]]:
    """{revision: (parent, voxel digest)} of every revision the store holds for the image."""
    out: dict[int, tuple[int | None, str]] = {}
    for rev in client.get(f"/images/{image_id}/labels").json()["items"]:
        got = client.get(f"/images/{image_id}/labels/{rev['revision']}")
        got.raise_for_status()
        out[int(rev["revision"])] = (rev["parent"], voxels_digest(got.content))
    return out


def same_base(clients: list[httpx.Client], image_id: str, savers: int, case: str) -> dict[str, Any]:
    base = clients[0].get(f"/images/{image_id}/labels").json()["items"][-1]["revision"]
    bodies = [label_bytes(case, shift=i + 1) for i in range(savers)]
    barrier = threading.Barrier(savers)

    def one(i: int) -> tuple[int, dict[str, Any]]:
        barrier.wait(60)
        r = save_label(clients[i % len(clients)], image_id, bodies[i], base)
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(savers) as pool:
        answers = list(pool.map(one, range(savers)))
    wall = time.perf_counter() - t0
    store = stored_digests(clients[1], image_id)
    saved = [(i, body) for i, (code, body) in enumerate(answers) if code == 201]
    lost = sum(
        1 for i, body in saved
        if store.get(int(body["revision"]), (None, ""))[1] != voxels_digest(bodies[i])
    )
    new_revisions = sorted(r for r in store if r > base)
    return {
        "savers": savers,
        "servers": len(clients),
        "base_revision": base,
        "saved": len(saved),
        "stale_409": sum(1 for code, _ in answers if code == 409),
        "other": sorted(code for code, _ in answers if code not in (201, 409)),
        "lost": lost,
        "new_revisions_in_store": new_revisions,
        "wall_seconds": round(wall, 3),
    }


def retry_on_409(clients: list[httpx.Client], image_id: str, savers: int, case: str) -> dict[str, Any]:
    start = clients[0].get(f"/images/{image_id}/labels").json()["items"][-1]["revision"]
    bodies = [label_bytes(case, shift=-(i + 1)) for i in range(savers)]
    barrier = threading.Barrier(savers)

    def one(i: int) -> tuple[int, int, float]:
        client = clients[i % len(clients)]
        base = start
        attempts = 0
        barrier.wait(60)
        t0 = time.perf_counter()
        while True:
            attempts += 1
            r = save_label(client, image_id, bodies[i], base)
            if r.status_code == 201:
                return int(r.json()["revision"]), attempts, time.perf_counter() - t0
            if r.status_code != 409:
                raise RuntimeError(f"saver {i}: {r.status_code} {r.text}")
            base = int(r.json()["error"]["current_revision"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(savers) as pool:
        results = list(pool.map(one, range(savers)))
    wall = time.perf_counter() - t0
    store = stored_digests(clients[0], image_id)
    revisions = [rev for rev, _, _ in results]
    expected = list(range(start + 1, start + savers + 1))
    in_order = all(store.get(r, (None, ""))[0] == r - 1 for r in expected)
    lost = sum(1 for i, (rev, _, _) in enumerate(results) if store.get(rev, (None, ""))[1] != voxels_digest(bodies[i]))
    attempts = [a for _, a, _ in results]
    return {
        "savers": savers,
        "servers": len(clients),
        "start_revision": start,
        "distinct_revisions": len(set(revisions)),
        "consecutive": sorted(revisions) == expected,
        "in_order": in_order,  # each new revision's parent is the one before it
        "lost": lost,
        "attempts_total": sum(attempts),
        "attempts_max": max(attempts),
        "seconds_to_save_p50": round(pct([s for _, _, s in results], 50), 3),
        "seconds_to_save_max": round(max(s for _, _, s in results), 3),
        "wall_seconds": round(wall, 3),
    }


def latency(client: httpx.Client, image_id: str, seconds: float, min_n: int) -> dict[str, Any]:
    lists: list[float] = []
    fetches: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(lists) < min_n:
        lists.append(timed_ms(lambda: client.get("/images", params={"limit": 50}).raise_for_status()))
        fetches.append(timed_ms(lambda: client.get(f"/images/{image_id}/volume").raise_for_status()))
    return {
        "n": len(lists),
        "list_ms": {"p50": round(pct(lists, 50), 2), "p95": round(pct(lists, 95), 2)},
        "fetch_ms": {"p50": round(pct(fetches, 50), 2), "p95": round(pct(fetches, 95), 2)},
        "loadavg": loadavg(),
    }


def wait_running(client: httpx.Client, job_id: str, deadline_s: float = 120) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] == "running" and (job.get("detail") or {}).get("epoch"):
            return dict(job)
        if job["state"] not in ("queued", "running"):
            raise RuntimeError(f"training ended early: {job}")
        time.sleep(0.3)
    raise RuntimeError("training did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    add_db_argument(ap)
    ap.add_argument("--savers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each latency phase")
    ap.add_argument("--quick", action="store_true", help="8 savers, 5 s latency phases")
    args = ap.parse_args()
    if args.quick:
        args.savers, args.seconds = 8, 5.0

    work = Path(tempfile.mkdtemp(prefix="segloop-bench-scaleout-"))
    pg_dir = Path("/tmp") / f"segloop-bench-pg-{os.getpid()}"  # the postgres user must reach it
    servers: list[Server] = []
    try:
        url = create_database(start_postgres(args.db, pg_dir))
        data = make_shared_data(work, url)
        common = ["--db", url, "--job-threads", "1", "--inference-threads", "1"]
        # A serves the API only (--jobs 0): the training of phase 3 runs on B
        servers = [Server(data, *common, "--jobs", "0"), Server(data, *common, "--jobs", "1")]
        for s in servers:
            s.wait_ready()
        result: dict[str, Any] = {
            "benchmark": "scaleout",
            "started": utc_now(),
            "machine": machine(),
            "setup": "two segloop serve processes (A: --jobs 0, B: --jobs 1) on one PostgreSQL database "
                     "(scripts/postgres.sh, same machine) and one data folder; Task04_Hippocampus cases",
            "loadavg_at_start": loadavg(),
        }
        with httpx.Client(base_url=servers[0].api, timeout=300) as a, httpx.Client(base_url=servers[1].api,
                                                                                  timeout=300) as b:
            clients = [a, b]
            image = image_of_case(a, "001")
            log(f"1. {args.savers} savers on one base, split over 2 servers")
            result["same_base"] = same_base(clients, image["id"], args.savers, "001")
            log(json.dumps(result["same_base"]))
            log(f"2. {args.savers} savers retrying on 409")
            result["retry_on_409"] = retry_on_409(clients, image["id"], args.savers, "001")
            log(json.dumps(result["retry_on_409"]))

            log("3. list/fetch on A: idle, then while B trains")
            probe = image_of_case(a, "003")
            latency(a, probe["id"], 2.0, 10)  # warm-up
            idle = latency(a, probe["id"], args.seconds, 30)
            r = b.post("/models/bench/train", json={"config": TRAIN})
            r.raise_for_status()
            job = wait_running(b, r.json()["id"])
            loaded = latency(a, probe["id"], args.seconds, 30)
            still = b.get(f"/jobs/{job['id']}").json()
            b.post(f"/jobs/{job['id']}/cancel")
            end = time.monotonic() + 60
            while time.monotonic() < end and b.get(f"/jobs/{job['id']}").json()["state"] == "running":
                time.sleep(0.3)
            idle_after = latency(a, probe["id"], args.seconds, 30)  # the machine's background may have changed
            result["latency_on_a"] = {
                "idle": idle,
                "while_b_trains": loaded,
                "idle_after": idle_after,
                "training_ran_on": "B" if job["runner"].endswith(f":{servers[1].proc.pid}") else "A",
                "training_state_after": still["state"],
                "training_epochs_during": (still.get("detail") or {}).get("epoch"),
                "ratio_p95": {
                    "list": ratio(loaded["list_ms"]["p95"], idle["list_ms"]["p95"]),
                    "fetch": ratio(loaded["fetch_ms"]["p95"], idle["fetch_ms"]["p95"]),
                },
                "note": "A, B, B's training child and PostgreSQL share this machine's "
                        f"{os.cpu_count()} cores: the ratio bounds what servers on separate machines would see",
            }
            log(json.dumps(result["latency_on_a"]))
        write_result(result, args.out)
        return 0
    finally:
        for s in servers:
            s.stop()
        stop_postgres(args.db, pg_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
