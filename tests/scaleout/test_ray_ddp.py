"""Training on several workers (``TrainConfig.workers``): torch.distributed + DistributedDataParallel
in Ray actors on a real Ray cluster (a head and a worker node on loopback, one CPU each: the job's
task is rank 0, one `RankActor` is rank 1), and the rules around it.

- A 2-worker training runs to the end and registers exactly one version; its ranks sampled from
  disjoint shards with different patches, yet ended with bit-identical weights (the gradients
  were all-reduced); only rank 0 validated.
- A cancel reaches both ranks (rank 1's worker stops too); a rank whose worker is killed fails the
  job, naming the rank; neither records a version, the current one stays current.
- workers > 1 where it cannot run (local jobs, a cluster too small, an indivisible batch, a plain
  `train` call) is a clear error, never a silent one-worker run.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from segloop.jobs import JobRunner
from segloop.ml.distributed import batch_per_rank, rank_seed, shard_indices
from tests.scaleout._ray_cluster import model_versions, train_params, wait_until


# --- the pure functions (no cluster) -----------------------------------------------------------
def test_rank_seeds_shards_and_batches() -> None:
    assert [rank_seed(7, r) for r in range(3)] == [7, 8, 9]  # rank 0 keeps the one-worker seed
    with pytest.raises(ValueError):
        rank_seed(0, -1)
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for s in shards for i in s) == list(range(7))  # disjoint and complete
    assert shard_indices(5, 0, 1) == list(range(5))  # one worker: everything
    assert shard_indices(1, 1, 2) == [0]  # fewer cases than ranks: every rank samples all
    with pytest.raises(ValueError):
        shard_indices(4, 2, 2)
    assert batch_per_rank(4, 2) == 2 and batch_per_rank(3, 1) == 3
    for batch, world in ((3, 2), (1, 2), (4, 0)):
        with pytest.raises(ValueError, match="multiple of workers"):
            batch_per_rank(batch, world)


def test_workers_need_a_divisible_batch_and_a_process_group(tmp_path: Path) -> None:
    from segloop.ml.training import TrainConfig, train
    from tests.unit.al_synthetic import make_store, tiny_train_config

    with pytest.raises(ValueError, match="batch_size .* multiple of workers"):
        TrainConfig(workers=2, batch_size=3)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        TrainConfig(workers=0)
    store = make_store(tmp_path / "d", n_train=2, n_pool=0)[0]
    with pytest.raises(ValueError, match="workers 2: train\\(\\) runs one rank .* segloop serve --jobs ray"):
        train(store, "tiny", tiny_train_config(workers=2), device="cpu")
    assert not store.list_models()


def test_segloop_train_rejects_several_workers(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.unit.al_synthetic import make_store

    make_store(tmp_path / "d", n_train=2, n_pool=0)[0].close()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"workers": 2, "batch_size": 2, "epochs": 1}))
    proc = subprocess.run([sys.executable, "-m", "segloop", "train", "tiny", "--data", str(tmp_path / "d"),
                           "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "trains in this process, on one worker" in proc.stderr and "--jobs ray" in proc.stderr, proc.stderr


def test_local_jobs_reject_several_workers(tmp_path: Path) -> None:
    from tests.unit.al_synthetic import make_store

    store = make_store(tmp_path / "d", n_train=2, n_pool=0)[0]
    runner = JobRunner(tmp_path / "d", mode="thread", store=store, poll_interval=0.05)
    runner.start()
    try:
        job = runner.wait(runner.submit("train", train_params(workers=2)).id, timeout=60)
    finally:
        runner.stop(timeout=10)
    assert job.state == "failed"
    assert job.error is not None and "needs jobs on a Ray cluster" in job.error and "use workers 1" in job.error
    assert not store.list_models()


# --- on the cluster ------------------------------------------------------------------------------
def _rank_pid(runner: JobRunner, job_id: str, rank: int) -> int | None:
    for entry in runner.db.log(job_id):
        m = re.search(rf"rank {rank} of \d+ on Ray node .* worker pid (\d+)", entry["line"])
        if m:
            return int(m.group(1))
    return None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_two_worker_training_shards_the_data_and_averages_the_gradients(ray_runner: tuple[JobRunner, Any]) -> None:
    runner, store = ray_runner
    # 4 labelled images, 1 held out: 3 training cases, global batch 2 = 1 patch per rank per step
    job = runner.submit("train", train_params(workers=2, batch_size=2, epochs=2, steps_per_epoch=3, val_split=0.25))
    done = runner.wait(job.id, timeout=150)
    assert done.state == "done", (done.state, done.error, [e["line"] for e in runner.db.log(job.id)][-15:])
    assert done.progress == 1.0
    assert model_versions(store) == [1] and store.get_model("tiny").current_version == 1  # registered once
    version = store.get_model("tiny").version(1)
    m = version.metrics
    assert m["steps"] == 6 and m["train_images"] == 3  # the step budget of one worker, not 2x
    assert m["validations"] >= 1 and m["val_dice"]  # rank 0 validated
    d = m["distributed"]
    assert (d["workers"], d["backend"], d["global_batch"], d["batch_per_rank"]) == (2, "gloo", 2, 1)
    r0, r1 = sorted(d["ranks"], key=lambda r: r["rank"])
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["pid"] != r1["pid"]  # two processes
    train_ids = sorted(i for i, _ in version.trained_on if [i, _] not in m["val_images"])
    assert not set(r0["cases"]) & set(r1["cases"]) and sorted(r0["cases"] + r1["cases"]) == train_ids
    assert r0["batches"] == r1["batches"] == 6 and r0["patches"] == r1["patches"] == 6
    assert r0["patch_digest"] != r1["patch_digest"]  # different data on each rank ...
    assert r0["weights_sha1"] == r1["weights_sha1"]  # ... and the same weights: gradients were all-reduced
    lines = [e["line"] for e in runner.db.log(job.id)]
    assert any(re.search(r"rank 1 of 2 on Ray node", line) for line in lines)
    assert any("rank 0 of 2: process group at" in line for line in lines)
    assert runner.get(job.id, with_metrics=True).metrics  # rank 0's progress and metrics came back


def test_cancel_reaches_every_rank_and_a_dead_rank_fails_the_job(ray_runner: tuple[JobRunner, Any]) -> None:
    runner, store = ray_runner
    before = model_versions(store)
    current = store.get_model("tiny").current_version if before else None
    long = train_params(workers=2, batch_size=2, epochs=500, steps_per_epoch=4, val_split=0.0)

    a = runner.submit("train", long)
    wait_until(lambda: _rank_pid(runner, a.id, 1) is not None and runner.get(a.id).progress > 0.0, 120,
               "the 2-worker training to make progress")
    rank1 = _rank_pid(runner, a.id, 1)
    assert rank1 is not None
    runner.cancel(a.id)
    cancelled = runner.wait(a.id, timeout=60)
    assert cancelled.state == "cancelled", (cancelled.state, cancelled.message, cancelled.error)
    assert "was stopped" not in (cancelled.message or "")  # cooperatively, through the ranks' agreement
    wait_until(lambda: _gone(rank1), 30, "rank 1's worker to stop after the cancel")

    b = runner.submit("train", long)
    wait_until(lambda: _rank_pid(runner, b.id, 1) is not None and runner.get(b.id).progress > 0.0, 120,
               "the second 2-worker training to make progress")
    rank1 = _rank_pid(runner, b.id, 1)
    assert rank1 is not None
    time.sleep(0.5)
    os.kill(rank1, signal.SIGKILL)
    failed = runner.wait(b.id, timeout=60)
    assert failed.state == "failed", (failed.state, failed.message, failed.error)
    assert failed.error is not None and "rank 1 of 2 died" in failed.error, failed.error
    assert model_versions(store) == before
    assert (store.get_model("tiny").current_version if before else None) == current

    # a training on more ranks than the cluster has CPUs is rejected at once, not left waiting
    c = runner.wait(runner.submit("train", train_params(workers=3, batch_size=3)).id, timeout=60)
    assert c.state == "failed" and c.error is not None and "needs 3 CPU (the cluster has 2" in c.error, c.error
