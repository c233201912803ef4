"""Two real ``segloop serve`` processes on one PostgreSQL database and one data folder behave as
one server (issue 14): the append-only rule and the 409 on a stale base hold across them, events
of one reach the clients of the other, jobs started on one are visible and cancellable on the
other, an interactive session is tied to its server (421 + its URL elsewhere), and the running
job of a server killed with SIGKILL is marked interrupted by the other after the stale time.

The tests of this module share one pair of servers and run in file order; the kill test is last.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration._harness import TINY_TRAIN, Server, wait_job
from tests.scaleout._cluster import (
    SseReader,
    create_database,
    drop_database,
    image_of_case,
    label_bytes,
    make_shared_data,
    save_label,
    start_servers,
)

STALE = 3.0  # --stale-after of both servers: a killed one is judged dead quickly
LONG_TRAIN = {**TINY_TRAIN, "epochs": 10_000}  # runs until cancelled or killed


@pytest.fixture(scope="module")
def shared(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    url = create_database(postgres)
    try:
        yield url, make_shared_data(tmp_path_factory.mktemp("scaleout"), url)
    finally:
        drop_database(postgres, url)


@pytest.fixture(scope="module")
def servers(shared: tuple[str, Path]) -> Iterator[list[Server]]:
    url, data = shared
    pair = start_servers(data, url, "--stale-after", str(STALE), "--jobs", "1")
    yield pair
    for s in pair:
        s.stop()


@pytest.fixture(scope="module")
def clients(servers: list[Server]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with httpx.Client(base_url=servers[0].api, timeout=120) as a, httpx.Client(base_url=servers[1].api, timeout=120) as b:
        yield a, b


def runner_of(server: Server) -> str:
    import socket

    return f"{socket.gethostname()}:{server.proc.pid}"


def wait_state(client: httpx.Client, job_id: str, states: set[str], deadline_s: float = 120.0) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_both_servers_see_one_store(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    ids_a = {i["id"] for i in a.get("/images").json()["items"]}
    ids_b = {i["id"] for i in b.get("/images").json()["items"]}
    assert ids_a == ids_b and len(ids_a) == 5


def test_concurrent_saves_on_one_base_from_both_servers(clients: tuple[httpx.Client, httpx.Client]) -> None:
    """12 savers (6 per server) on the same base revision: exactly one saved, the rest 409, and
    the store holds exactly the saved one on top of the base (nothing lost, nothing overwritten)."""
    a, b = clients
    image = image_of_case(a, "003")
    base = a.get(f"/images/{image['id']}/labels").json()["items"][-1]["revision"]
    bodies = [label_bytes("003", shift=i) for i in range(12)]
    barrier = threading.Barrier(12)

    def one(i: int) -> httpx.Response:
        client = a if i % 2 == 0 else b
        barrier.wait(30)
        return save_label(client, image["id"], bodies[i], base)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(one, range(12)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 11, [r.text for r in responses if r.status_code not in (201, 409)]
    saved = next(r.json() for r in responses if r.status_code == 201)
    assert saved["revision"] == base + 1
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["current_revision"] == base + 1
    for client in (a, b):
        revs = client.get(f"/images/{image['id']}/labels").json()["items"]
        assert [x["revision"] for x in revs] == list(range(1, base + 2))
        assert revs[-1]["author"] == saved["author"] and revs[-1]["parent"] == base


def test_savers_retrying_on_409_get_distinct_revisions_in_order(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    image = image_of_case(a, "004")
    n = 8
    body = label_bytes("004")
    got: list[int] = []
    lock = threading.Lock()

    def saver(i: int) -> None:
        client = a if i % 2 == 0 else b
        base = client.get(f"/images/{image['id']}/labels").json()["items"][-1]["revision"]
        for _ in range(200):
            r = save_label(client, image["id"], body, base)
            if r.status_code == 201:
                with lock:
                    got.append(r.json()["revision"])
                return
            assert r.status_code == 409, r.text
            base = r.json()["error"]["current_revision"]
        raise AssertionError("saver never got through")

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(saver, range(n)))
    assert sorted(got) == list(range(2, n + 2))
    revs = a.get(f"/images/{image['id']}/labels").json()["items"]
    assert [x["revision"] for x in revs] == list(range(1, n + 2))
    assert [x["parent"] for x in revs[1:]] == list(range(1, n + 1))


def test_an_event_published_on_one_server_reaches_the_clients_of_the_other(
    clients: tuple[httpx.Client, httpx.Client], servers: list[Server]
) -> None:
    a, _ = clients
    reader = SseReader(servers[1].api, types="label.revision")
    try:
        image = image_of_case(a, "006")
        r = save_label(a, image["id"], label_bytes("006", shift=1), 1)
        assert r.status_code == 201, r.text
        event = reader.wait_for(
            lambda e: e["type"] == "label.revision" and e["data"].get("image_id") == image["id"]
            and e["data"].get("revision") == 2
        )
        assert event["data"]["author"] == r.json()["author"]
    finally:
        reader.close()


def test_a_job_started_on_one_server_is_listed_and_cancelled_on_the_other(
    clients: tuple[httpx.Client, httpx.Client], servers: list[Server]
) -> None:
    a, b = clients
    reader = SseReader(servers[0].api, types="job.state")
    try:
        r = a.post("/models/long/train", json={"config": LONG_TRAIN})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        # one training job per model across both servers
        again = b.post("/models/long/train", json={"config": LONG_TRAIN})
        assert again.status_code == 409, again.text
        running = wait_state(b, job_id, {"running"})
        assert running["runner"] in {runner_of(s) for s in servers}  # claimed by exactly one of them
        assert job_id in {j["id"] for j in b.get("/jobs").json()["items"]}
        assert b.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
        final = wait_state(a, job_id, {"cancelled", "failed", "done", "interrupted"}, deadline_s=60)
        assert final["state"] == "cancelled", final
        assert b.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
        # the state change reached a client of A whichever server ran the job
        reader.wait_for(lambda e: e["data"].get("id") == job_id and e["data"].get("state") == "cancelled")
    finally:
        reader.close()


def test_queued_jobs_run_once_on_either_server(clients: tuple[httpx.Client, httpx.Client], servers: list[Server]) -> None:
    """Training jobs of several models submitted on both servers: each is claimed by one server,
    runs once and ends done (``--jobs 1`` each: both servers take some)."""
    a, b = clients
    ids = []
    for i in range(4):
        client = a if i % 2 == 0 else b
        r = client.post(f"/models/m{i}/train", json={"config": {**TINY_TRAIN, "epochs": 1}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    jobs = [wait_job(a, job_id, deadline_s=600) for job_id in ids]
    assert [j["state"] for j in jobs] == ["done"] * 4, [(j["state"], j["error"]) for j in jobs]
    runners = {j["runner"] for j in jobs}
    assert runners <= {runner_of(s) for s in servers}
    for i in range(4):
        model = b.get(f"/models/m{i}").json()
        assert len(model["versions"]) == 1, model  # trained once, not twice


def test_a_session_is_answered_421_with_its_servers_url_elsewhere(
    clients: tuple[httpx.Client, httpx.Client], servers: list[Server]
) -> None:
    a, b = clients
    image = image_of_case(a, "007")
    r = a.post("/sessions", json={"image_id": image["id"], "model": "m0"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert a.get(f"/sessions/{sid}").status_code == 200
    elsewhere = b.get(f"/sessions/{sid}")
    assert elsewhere.status_code == 421, elsewhere.text
    err = elsewhere.json()["error"]
    assert err["code"] == "session_elsewhere" and err["server_url"] == servers[0].url
    assert elsewhere.headers["location"] == f"{servers[0].url}/api/v1/sessions/{sid}"
    click = b.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": 1, "points": [[10, 10, 10]]}]})
    assert click.status_code == 421
    assert b.get("/sessions/nope").status_code == 404
    assert a.delete(f"/sessions/{sid}").status_code == 200
    assert b.get(f"/sessions/{sid}").status_code == 404  # closed: nobody holds it


def test_a_killed_servers_running_job_is_marked_interrupted_by_the_other(
    clients: tuple[httpx.Client, httpx.Client], servers: list[Server]
) -> None:
    """SIGKILL of the server running a training job while savers on both servers keep saving:
    the other marks the job interrupted after the stale time, goes on serving, and the image's
    revisions stay a clean chain (every revision's file there, each the parent of the next)."""
    a, b = clients
    r = a.post("/models/crash/train", json={"config": LONG_TRAIN})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_state(a, job_id, {"running"})
    victim = next(s for s in servers if runner_of(s) == job["runner"])
    survivor = b if victim is servers[0] else a
    image = image_of_case(a, "001")
    body = label_bytes("001", shift=2)
    stop = threading.Event()
    saved: list[int] = []

    def saver(client: httpx.Client) -> None:
        base = client.get(f"/images/{image['id']}/labels").json()["items"][-1]["revision"]
        while not stop.is_set():
            try:
                r = save_label(client, image["id"], body, base)
            except httpx.HTTPError:
                return  # its server was killed
            if r.status_code == 201:
                saved.append(r.json()["revision"])
                base = r.json()["revision"]
            elif r.status_code == 409:
                base = r.json()["error"]["current_revision"]

    threads = [threading.Thread(target=saver, args=(c,)) for c in (a, b, a, b)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim.stop(signal.SIGKILL)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    final = wait_state(survivor, job_id, {"interrupted", "failed", "cancelled", "done"}, deadline_s=60)
    assert final["state"] == "interrupted", final
    assert "stopped" in final["message"] and job["runner"] in final["message"]
    # the survivor goes on serving, and the model has no version from the killed training
    assert survivor.get("/images").status_code == 200
    crash = survivor.get("/models/crash")
    assert crash.status_code == 404 or not crash.json()["versions"]
    revs = survivor.get(f"/images/{image['id']}/labels").json()["items"]
    numbers = [x["revision"] for x in revs]
    assert numbers == list(range(1, len(revs) + 1)) and len(revs) > 1
    assert [x["parent"] for x in revs[1:]] == numbers[:-1]
    assert set(saved) <= set(numbers)  # every answered save is there
    for n in numbers:
        assert survivor.get(f"/images/{image['id']}/labels/{n}").status_code == 200
