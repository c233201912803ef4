"""The pieces that make several servers on one PostgreSQL database behave as one, in-process:
the job claim (two runners, each job runs once), the event relay (`ClusterLink`) and the reaping
of a dead server's running jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from segloop.jobs import EventBus, JobDB, JobRunner
from segloop.jobs.db import jobs_table, servers_table, utcnow
from segloop.jobs.relay import ClusterLink, server_key

RUNS: list[tuple[str, str]] = []
RUNS_LOCK = threading.Lock()


class _Tag:
    def __init__(self, name: str) -> None:
        self.name = name


def record_run(ctx: Any) -> dict[str, Any]:
    """Job handler: note (job id, which runner ran it)."""
    time.sleep(0.02)
    with RUNS_LOCK:
        RUNS.append((ctx.job_id, ctx.store.name))
    return {"ok": True}


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def db(pg_url: str, folder: Path) -> Iterator[JobDB]:
    jobs = JobDB(folder, url=pg_url)
    yield jobs
    jobs.dispose()


def test_two_runners_on_one_database_run_each_queued_job_once(pg_url: str, folder: Path) -> None:
    handlers = {"evaluate": "tests.scaleout.test_relay:record_run"}
    runners = [
        JobRunner(folder, mode="thread", max_running=2, handlers=handlers, db_url=pg_url, poll_interval=0.05,
                  store=_Tag(name))
        for name in ("A", "B")
    ]
    RUNS.clear()
    for r in runners:
        r.start()
    try:
        ids = [runners[i % 2].submit("evaluate", {"i": i}).id for i in range(30)]
        jobs = [runners[0].wait(job_id, timeout=60) for job_id in ids]
    finally:
        for r in runners:
            r.stop()
    assert [j.state for j in jobs] == ["done"] * 30
    ran = [job_id for job_id, _ in RUNS]
    assert sorted(ran) == sorted(ids)  # every job once, none twice
    assert {name for _, name in RUNS} == {"A", "B"}  # both runners claimed some


def test_events_are_relayed_between_links_in_order_and_not_echoed(db: JobDB) -> None:
    bus_a, bus_b = EventBus(), EventBus()
    a = ClusterLink(db, bus_a, "host-a:1", "http://a", poll=0.05)
    b = ClusterLink(db, bus_b, "host-b:2", "http://b", poll=0.05)
    got_a: list[dict[str, Any]] = []
    got_b: list[dict[str, Any]] = []
    bus_a.subscribe(got_a.append)
    bus_b.subscribe(got_b.append)
    a.start()
    b.start()
    try:
        for i in range(50):
            bus_a.publish("job.progress", {"i": i})
        bus_b.publish("label.revision", {"image_id": "x", "revision": 2})
        bus_a.publish("stream.lagged", {})  # local-only: never relayed
        wait_until(lambda: len([e for e in got_b if e["type"] == "job.progress"]) == 50)
        wait_until(lambda: any(e["type"] == "label.revision" for e in got_a))
        time.sleep(0.3)  # a round more: nothing echoes back
        assert [e["data"]["i"] for e in got_b if e["type"] == "job.progress"] == list(range(50))
        assert [e["type"] for e in got_a].count("label.revision") == 1
        assert [e["type"] for e in got_a].count("job.progress") == 50  # its own, published once
        assert not any(e["type"] == "stream.lagged" for e in got_b)
        assert set(a.live_servers()) == {"host-a:1", "host-b:2"}
        assert b.live_servers()["host-a:1"] == "http://a"
    finally:
        a.stop()
        b.stop()
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(servers_table)).scalar_one() == 0


def test_sessions_are_found_on_their_live_server_only(db: JobDB) -> None:
    a = ClusterLink(db, EventBus(), "host-a:1", "http://a", poll=0.05, stale_seconds=2)
    b = ClusterLink(db, EventBus(), "host-b:2", "http://b", poll=0.05, stale_seconds=2)
    a.start()
    b.start()
    try:
        a.claim_session("s1")
        assert b.session_server("s1") == ("host-a:1", "http://a")
        assert b.session_server("s2") is None
        a.release_session("s1")
        assert b.session_server("s1") is None
        a.claim_session("s3")
    finally:
        b.stop()
    # a's heartbeats stop (its thread is told to stop, its row stays as after a crash)
    a._stop.set()
    a._thread.join(5) if a._thread else None
    c = ClusterLink(db, EventBus(), "host-c:3", "http://c", poll=0.05, stale_seconds=2)
    wait_until(lambda: c.session_server("s3") is None, timeout=10)


def _running_job(db: JobDB, runner: str) -> str:
    job, held = db.create("train", {"model": runner})
    assert held is None
    assert db.transition(job.id, {"queued"}, state="running", runner=runner, started_at=utcnow())
    return job.id


def test_a_dead_servers_running_jobs_are_reaped_and_nobody_elses(db: JobDB) -> None:
    bus = EventBus()
    events: list[dict[str, Any]] = []
    bus.subscribe(events.append)
    live = ClusterLink(db, bus, "host-live:10", "http://live", poll=0.05, stale_seconds=2)
    live.start()
    try:
        with db.engine.begin() as conn:
            old = utcnow() - timedelta(seconds=60)
            conn.execute(servers_table.insert().values(id="host-dead:11", url="http://dead", started_at=old, seen_at=old))
        dead_job = _running_job(db, "host-dead:11")
        live_job = _running_job(db, "host-live:10")
        cli_job = _running_job(db, "host-cli:12")  # a CLI process, not a server: not ours to judge
        wait_until(lambda: db.get(dead_job).state == "interrupted", timeout=10)
        assert "host-dead:11" in db.get(dead_job).message
        time.sleep(1.0)
        assert db.get(live_job).state == "running"
        assert db.get(cli_job).state == "running"
        assert any(e["type"] == "job.state" and e["data"]["id"] == dead_job for e in events)
        # the runner of a job declared interrupted elsewhere is told to stop it
        assert db.cancel_requested([dead_job, live_job]) == {dead_job}
    finally:
        live.stop()


def test_a_long_host_name_fits_the_servers_table() -> None:
    long = "h" * 80 + ":1234"
    key = server_key(long)
    assert len(key) <= 64 and key != server_key("h" * 81 + ":1234")
    assert server_key("short:1") == "short:1"


def test_jobs_table_claim_is_a_compare_and_set(db: JobDB) -> None:
    job, _ = db.create("evaluate", {})
    wins = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait(10)
        if db.transition(job.id, {"queued"}, state="running", runner=f"r:{i}"):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(jobs_table.c.runner).where(jobs_table.c.id == job.id)).scalar_one() == f"r:{wins[0]}"


def test_a_runner_with_no_job_slots_leaves_queued_jobs_to_the_others(pg_url: str, folder: Path) -> None:
    handlers = {"evaluate": "tests.scaleout.test_relay:record_run"}
    idle = JobRunner(folder, mode="thread", max_running=0, handlers=handlers, db_url=pg_url, poll_interval=0.05,
                     store=_Tag("idle"))
    idle.start()
    try:
        job = idle.submit("evaluate", {})
        time.sleep(0.5)
        assert idle.get(job.id).state == "queued"
        worker = JobRunner(folder, mode="thread", max_running=1, handlers=handlers, db_url=pg_url,
                           poll_interval=0.05, store=_Tag("worker"))
        worker.start()
        try:
            assert worker.wait(job.id, timeout=30).state == "done"
        finally:
            worker.stop()
    finally:
        idle.stop()


def test_jobs_0_needs_a_server_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    from segloop.server.settings import ServerSettings, SettingsError

    monkeypatch.delenv("SEGLOOP_DB", raising=False)
    with pytest.raises(SettingsError, match="--jobs 0"):
        ServerSettings(data=tmp_path, max_running_jobs=0).resolve()
    monkeypatch.setenv("SEGLOOP_DB", pg_url)
    assert ServerSettings(data=tmp_path, max_running_jobs=0).resolve().max_running_jobs == 0


def test_the_advertised_url_of_a_server() -> None:
    import socket

    from segloop.server.settings import ServerSettings, SettingsError

    assert ServerSettings(data=Path("d"), port=8123).advertised_url == "http://127.0.0.1:8123"
    wild = ServerSettings(data=Path("d"), host="0.0.0.0", port=8123)
    assert wild.advertised_url == f"http://{socket.gethostname()}:8123"
    behind = ServerSettings(data=Path("d"), public_url="https://seg-b.lab.example/ ").resolve()
    assert behind.advertised_url == "https://seg-b.lab.example"
    with pytest.raises(SettingsError, match="public-url"):
        ServerSettings(data=Path("d"), public_url="seg-b.lab").resolve()
