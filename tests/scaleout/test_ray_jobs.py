"""Jobs on a real Ray cluster (`segloop.jobs.ray_executor`): a head and a worker node started as
separate ``ray start`` processes on loopback (one CPU each), and a `JobRunner` that reaches them
through the head's Ray Client port, as ``segloop serve --jobs ray://HOST:PORT`` does.

A tiny training and a scoring job run there to the end (progress, metrics, log, the new model
version); a training cancelled while it waits for a worker, one cancelled while it trains and one
whose Ray worker is killed (SIGKILL) end cancelled, cancelled and failed, and none records a model
version; a server on the cluster killed mid-training leaves an interrupted job on restart.

The cluster's processes are ended by their process group (each ``ray start`` runs in a session of
its own), not by ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from segloop.jobs import JobRunner
from segloop.jobs.executors import make_executor, ray_address
from segloop.server.settings import RAY_MAX_JOBS, ServerSettings, SettingsError, parse_jobs_option
from tests.scaleout._ray_cluster import RayCluster, model_versions, train_params, wait_until, worker_pid
from tests.unit.al_synthetic import make_store, tiny_train_config


# --- --jobs parsing (no cluster) ---------------------------------------------------------------
def test_jobs_option_takes_a_number_ray_or_a_ray_address() -> None:
    assert parse_jobs_option("3") == (None, 3)
    assert parse_jobs_option("0") == (None, 0)
    assert parse_jobs_option("ray") == ("ray", RAY_MAX_JOBS)
    assert parse_jobs_option("ray://head.lab:10001/") == ("ray://head.lab:10001", RAY_MAX_JOBS)
    for bad in ("-1", "rays", "ray://head", "ray://head:port", "ray://:10001", "4.5"):
        with pytest.raises(SettingsError):
            parse_jobs_option(bad)
    assert ray_address("ray") is None


def test_serve_flags_choose_the_ray_executor(tmp_path: Path) -> None:
    from segloop.cli import build_parser
    from segloop.cli.serve_command import settings_from_args

    parser = build_parser()
    s = settings_from_args(parser.parse_args(["serve", "--data", str(tmp_path), "--jobs", "ray://10.0.0.5:10001"]))
    assert (s.job_mode, s.max_running_jobs) == ("ray://10.0.0.5:10001", RAY_MAX_JOBS)
    s = settings_from_args(parser.parse_args(["serve", "--data", str(tmp_path), "--jobs", "1", "--job-mode", "thread"]))
    assert (s.job_mode, s.max_running_jobs) == ("thread", 1)


def test_ray_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SettingsError, match=re.escape("pip install 'segloop[ray]'")):
        ServerSettings(data=tmp_path, job_mode="ray").resolve()
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    from segloop.jobs.executors import ExecutorConfig
    from segloop.jobs.ray_executor import RayMissing

    with pytest.raises(RayMissing, match=re.escape("pip install 'segloop[ray]'")):
        make_executor("ray", ExecutorConfig(tmp_path)).start()


def test_training_then_scoring_run_on_the_cluster(ray_runner: tuple[JobRunner, Any]) -> None:
    runner, store = ray_runner
    seen: list[tuple[str, dict[str, Any]]] = []
    runner.bus.subscribe(lambda event: seen.append((event["type"], event["data"])))

    job = runner.submit("train", train_params(epochs=2, steps_per_epoch=2))
    done = runner.wait(job.id, timeout=120)
    assert done.state == "done", (done.state, done.message, done.error, runner.db.log(job.id)[-10:])
    assert done.progress == 1.0
    assert done.result is not None and done.result["model_version"]["version"] == 1
    assert model_versions(store) == [1] and store.get_model("tiny").current_version == 1
    lines = [e["line"] for e in runner.db.log(job.id)]
    assert any("running on Ray node" in line for line in lines) and any("training 'tiny'" in line for line in lines)
    assert runner.get(job.id, with_metrics=True).metrics  # per-epoch records came back from the worker
    assert any(t == "model.version" and d.get("version") == 1 for t, d in seen)  # its event reached this bus
    assert any(t == "job.progress" and d.get("job_id") == job.id for t, d in seen)

    score = runner.submit("score", {"model": "tiny", "strategy": "entropy", "device": "cpu"})
    scored = runner.wait(score.id, timeout=90)
    assert scored.state == "done", (scored.state, scored.error, runner.db.log(score.id)[-10:])
    assert scored.result is not None and scored.result["scored"] == 4 and scored.result["version"] == 1


def test_cancel_running_and_waiting_and_a_killed_worker(ray_runner: tuple[JobRunner, Any]) -> None:
    """Two long trainings fill the cluster's two CPUs and a third waits for a worker: the waiting
    one is cancelled off Ray's queue (it never runs), the first is cancelled while it trains (it
    stops cooperatively on the DB flag), the second's worker is killed with SIGKILL (the job fails
    and is not retried). No model gains a version."""
    runner, store = ray_runner
    if not model_versions(store):  # alone: a first version to keep
        assert runner.wait(runner.submit("train", train_params(epochs=1, steps_per_epoch=1)).id, 120).state == "done"
    before = model_versions(store)
    current = store.get_model("tiny").current_version

    a = runner.submit("train", train_params(epochs=500, steps_per_epoch=4))
    b = runner.submit("train", {**train_params(epochs=500, steps_per_epoch=4), "model": "tiny-b"})
    wait_until(lambda: all(worker_pid(runner, j.id) and runner.get(j.id).progress > 0.0 for j in (a, b)), 120,
                "both trainings to make progress on Ray")
    c = runner.submit("train", {**train_params(epochs=500, steps_per_epoch=4), "model": "tiny-c"})
    wait_until(lambda: runner.get(c.id).state == "running", 10, "the third training to be handed to Ray")
    time.sleep(1.0)
    assert "waiting for a Ray worker" in runner.get(c.id).message and worker_pid(runner, c.id) is None

    runner.cancel(c.id)
    waiting = runner.wait(c.id, timeout=30)
    assert waiting.state == "cancelled", (waiting.state, waiting.message, waiting.error)
    assert worker_pid(runner, c.id) is None  # never ran

    runner.cancel(a.id)
    cancelled = runner.wait(a.id, timeout=60)
    assert cancelled.state == "cancelled", (cancelled.state, cancelled.message, cancelled.error)

    pid = worker_pid(runner, b.id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    failed = runner.wait(b.id, timeout=60)
    assert failed.state == "failed", (failed.state, failed.message, failed.error)
    assert failed.error is not None and "Ray worker running the job died" in failed.error
    time.sleep(1.0)
    assert runner.get(b.id).state == "failed"  # not retried behind our back
    assert model_versions(store) == before and store.get_model("tiny").current_version == current
    for name in ("tiny-b", "tiny-c"):
        with contextlib.suppress(Exception):
            assert not store.get_model(name).versions

    # the cluster still runs jobs after the crash
    again = runner.submit("score", {"model": "tiny", "strategy": "random"})
    assert runner.wait(again.id, timeout=90).state == "done"


def test_server_on_ray_and_the_interrupted_rule_after_its_crash(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``segloop serve --jobs ray://...``: a training started through the API runs on the cluster;
    the server is killed (-9) mid-training; restarted, it marks the job interrupted, the orphaned
    task stops by itself (it watches the job's row) without recording a version, and the restarted
    server runs jobs on the cluster again."""
    import httpx

    from tests.integration._harness import Server

    folder = tmp_path_factory.mktemp("rayserver") / "data"
    make_store(folder, n_train=4, n_pool=2)[0].close()
    args = ("--jobs", ray_cluster.address, "--job-threads", "1")
    server = Server(folder, *args).wait_ready(deadline_s=120)
    try:
        with httpx.Client(base_url=server.api, timeout=30) as api:
            r = api.post("/models/tiny/train", json={"config": tiny_train_config(epochs=500, steps_per_epoch=4).to_dict()})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def server_worker_pid() -> int | None:
                for entry in api.get(f"/jobs/{job_id}/log").json()["items"]:
                    m = re.search(r"worker pid (\d+)", entry["line"])
                    if m:
                        return int(m.group(1))
                return None

            wait_until(lambda: api.get(f"/jobs/{job_id}").json()["progress"] > 0.0 and server_worker_pid() is not None, 90,
                        "the training to make progress on Ray")
            pid = server_worker_pid()
            assert pid is not None
    finally:
        server.stop(signal.SIGKILL)
    server = Server(folder, *args).wait_ready(deadline_s=120)
    try:
        with httpx.Client(base_url=server.api, timeout=30) as api:
            job = api.get(f"/jobs/{job_id}").json()
            assert job["state"] == "interrupted", job
            wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), 60,
                        "the orphaned Ray task to stop")
            assert api.get("/models/tiny").status_code == 404 or not api.get("/models/tiny").json().get("versions")
            r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "random"}})
            assert r.status_code == 202, r.text
            score_id = r.json()["id"]
            wait_until(lambda: api.get(f"/jobs/{score_id}").json()["state"] not in ("queued", "running"), 90,
                        "the score job to end")
            assert api.get(f"/jobs/{score_id}").json()["state"] == "done"
    finally:
        server.stop()


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "Z"
