"""Active learning over HTTP against a real server process: `GET /next` with the model-based
strategies (scored at once for a small pool, by a `score` job with progress events otherwise,
then from the cache; a new model version scores again), `POST /jobs` kind ``score``, and label
saves while a pool is being scored.

Data: four hippocampus cases with final reference labels (the training set of a tiny model)
and three without any label (the pool)."""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.integration._harness import TINY_TRAIN, Server, make_data, wait_job

LABELLED = ("001", "003", "004", "006")
POOL = ("007", "008", "011")
POOL_IDS = {f"hippocampus_{c}" for c in POOL}


@pytest.fixture(scope="module")
def al_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = make_data(tmp_path_factory.mktemp("al"), LABELLED, unlabeled=POOL)
    srv = Server(data, "--job-threads", "1").wait_ready()
    try:
        with httpx.Client(base_url=srv.api, timeout=120) as c:
            job = c.post("/models/al/train", json={"config": TINY_TRAIN}).json()
            done = wait_job(c, job["id"], 600)
            assert done["state"] == "done", done
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def api(al_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=al_server.api, timeout=300) as c:
        yield c


class Events:
    """Collects every event from the WebSocket in a thread until `close`."""

    def __init__(self, server: Server) -> None:
        self.url = f"ws://127.0.0.1:{server.port}/api/v1/events/ws"
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "WebSocket did not open"

    def _run(self) -> None:
        with connect(self.url, open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "stream.open"
            self.ready.set()
            while not self.stop.is_set():
                try:
                    self.events.append(json.loads(ws.recv(timeout=0.5)))
                except TimeoutError:
                    continue

    def close(self) -> list[dict[str, Any]]:
        self.stop.set()
        self.thread.join(10)
        return self.events


def test_strategies_lists_all(api: httpx.Client) -> None:
    body = api.get("/activelearning/strategies").json()
    by_name = {s["name"]: s for s in body["available"]}
    assert set(by_name) == {"random", "sequential", "entropy", "soft-dice", "mc-dropout", "tta", "typiclust"}
    assert by_name["typiclust"]["needs_model"] and "typical" in by_name["typiclust"]["description"]
    assert not by_name["random"]["needs_model"] and by_name["entropy"]["needs_model"]
    assert by_name["soft-dice"]["needs_model"] and by_name["entropy"]["params"]["region"] == "class"
    assert by_name["mc-dropout"]["params"]["passes"] >= 2
    assert body["pending"] == []


def test_next_checks_its_arguments(api: httpx.Client) -> None:
    r = api.get("/next", params={"strategy": "entropy"})
    assert r.status_code == 422 and "model" in r.json()["error"]["message"]
    r = api.get("/next", params={"strategy": "entropy", "model": "nope"})
    assert r.status_code == 404
    r = api.get("/next", params={"strategy": "bogus"})
    assert r.status_code == 422 and "entropy" in r.json()["error"]["message"]
    r = api.get("/next", params={"strategy": "entropy", "model": "al", "param": "region"})
    assert r.status_code == 422 and "KEY=VALUE" in r.json()["error"]["message"]
    r = api.get("/next", params={"strategy": "entropy", "model": "al", "param": "passes=3"})
    assert r.status_code == 422 and "passes" in r.json()["error"]["message"]


def test_next_takes_strategy_parameters_and_scores_them_apart(api: httpx.Client) -> None:
    query = [("strategy", "entropy"), ("model", "al"), ("count", "3"), ("param", "region=volume"), ("param", "dilation=1")]
    first = api.get("/next", params=query)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["params"] == {"region": "volume", "foreground_only": False, "dilation": 1}
    assert body["source"] == "scored" and body["scored_now"] == 3  # not the default parameters' scores
    again = api.get("/next", params=query).json()
    assert again["source"] == "cache" and [i["image"]["id"] for i in again["items"]] == [i["image"]["id"] for i in body["items"]]


def test_random_and_sequential_need_no_model(api: httpx.Client) -> None:
    seq = api.get("/next", params={"strategy": "sequential", "count": 10}).json()
    assert seq["status"] == "ready" and seq["pool"] == 3
    assert [i["image"]["id"] for i in seq["items"]] == sorted(POOL_IDS)
    assert [i["rank"] for i in seq["items"]] == [1, 2, 3] and all(i["score"] is None for i in seq["items"])
    a = api.get("/next", params={"strategy": "random", "count": 3, "seed": 5}).json()
    b = api.get("/next", params={"strategy": "random", "count": 3, "seed": 5}).json()
    assert [i["image"]["id"] for i in a["items"]] == [i["image"]["id"] for i in b["items"]]  # stable
    assert {i["image"]["id"] for i in a["items"]} == POOL_IDS


def test_entropy_small_pool_scored_at_once_then_cached(api: httpx.Client) -> None:
    r = api.get("/next", params={"strategy": "entropy", "model": "al", "count": 2})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["model"] == "al" and first["version"] == 1
    assert first["source"] == "scored" and first["scored_now"] == 3 and first["pool"] == 3
    items = first["items"]
    assert len(items) == 2 and [i["rank"] for i in items] == [1, 2]
    assert all(isinstance(i["score"], float) and 0.0 <= i["score"] <= 1.0 for i in items)
    assert items[0]["score"] >= items[1]["score"]
    assert {i["image"]["id"] for i in items} <= POOL_IDS

    again = api.get("/next", params={"strategy": "entropy", "model": "al", "count": 3}).json()
    assert again["source"] == "cache" and again["scored_now"] == 0
    assert [i["image"]["id"] for i in again["items"]][:2] == [i["image"]["id"] for i in items]
    assert all(i["cached"] for i in again["items"])
    scores = [i["score"] for i in again["items"]]
    assert scores == sorted(scores, reverse=True)


def test_typiclust_describes_pool_and_labels_once_then_orders_from_the_cache(api: httpx.Client) -> None:
    # a batch-mode strategy: the 3 pool images and the 4 labelled ones are described by the model
    # (7 passes, few enough to do at once), then the pool is ordered as a whole
    r = api.get("/next", params={"strategy": "typiclust", "model": "al", "count": 2})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["source"] == "scored" and first["scored_now"] == 7 and first["pool"] == 3
    assert len(first["items"]) == 2 and {i["image"]["id"] for i in first["items"]} <= POOL_IDS
    assert all(isinstance(i["score"], float) and i["score"] >= 0 for i in first["items"])
    again = api.get("/next", params={"strategy": "typiclust", "model": "al", "count": 2}).json()
    assert again["source"] == "cache" and again["scored_now"] == 0 and again["cached"] == 7
    assert [i["image"]["id"] for i in again["items"]] == [i["image"]["id"] for i in first["items"]]
    assert all(i["cached"] for i in again["items"])


def _label_bytes(api: httpx.Client, image_id: str) -> bytes:
    vol = api.get(f"/images/{image_id}/volume")
    img = nib.Nifti1Image.from_bytes(gzip.decompress(vol.content))
    lab = np.zeros(img.shape, dtype=np.uint8)
    lab[10:14, 10:14, 10:14] = 1
    return gzip.compress(nib.Nifti1Image(lab, img.affine).to_bytes())


def test_large_pool_goes_to_a_score_job(al_server: Server, api: httpx.Client) -> None:
    events = Events(al_server)
    try:
        # mc-dropout: 8 passes x 3 images = 24 forward passes > 16 → a background job
        r = api.get("/next", params={"strategy": "mc-dropout", "model": "al", "count": 3})
        assert r.status_code == 202, r.text
        body = r.json()
        job_id = body["job_id"]
        assert body["status"] == "scoring" and body["items"] == [] and body["unscored"] == 3
        assert r.headers["location"] == f"/api/v1/jobs/{job_id}" and int(r.headers["retry-after"]) >= 1
        assert body["job"]["kind"] == "score" and body["job"]["params"]["strategy"] == "mc-dropout"

        # asking again while it runs reports the same job instead of starting another
        again = api.get("/next", params={"strategy": "mc-dropout", "model": "al", "count": 3})
        if again.status_code == 202:
            assert again.json()["job_id"] == job_id and again.json()["job_started"] is False
        # the same scoring asked for through POST /jobs while it runs → 409 naming it
        dup = api.post("/jobs", json={"kind": "score", "params": {"strategy": "mc-dropout", "model": "al"}})
        assert dup.status_code in (202, 409)
        if dup.status_code == 409:
            assert dup.json()["error"]["job_id"] == job_id
        else:
            wait_job(api, dup.json()["id"])

        # saving a label is not blocked by scoring (a draft: the image stays in the pool)
        r = api.post("/images/hippocampus_007/labels", files={"file": ("l.nii.gz", _label_bytes(api, "hippocampus_007"))})
        assert r.status_code == 201, r.text

        done = wait_job(api, job_id, 600)
        assert done["state"] == "done", done
        assert done["result"]["scored"] + done["result"]["cached"] == 3
    finally:
        events.close()
    mine = [e for e in events.events if e["data"].get("job_id") == job_id or e["data"].get("id") == job_id]
    progress = [e["data"] for e in mine if e["type"] == "job.progress"]
    assert progress and any(p.get("total") == 3 for p in progress), progress
    assert any(e["type"] == "job.state" and e["data"]["state"] == "done" for e in mine)

    ready = api.get("/next", params={"strategy": "mc-dropout", "model": "al", "count": 3})
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["source"] == "cache" and {i["image"]["id"] for i in body["items"]} == POOL_IDS
    assert all(isinstance(i["score"], float) for i in body["items"])
    assert [i["rank"] for i in body["items"]] == [1, 2, 3]


def test_score_job_parameters_are_checked(api: httpx.Client) -> None:
    r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "entropy"}})
    assert r.status_code == 422 and "model" in r.json()["error"]["message"]
    r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "tta", "model": "al", "bogus": 1}})
    assert r.status_code == 422 and "bogus" in r.json()["error"]["message"]
    r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "tta", "model": "al",
                                                             "strategy_params": {"passes": 1}}})
    assert r.status_code == 422 and "passes" in r.json()["error"]["message"]
    r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "random", "model": "al"}})
    assert r.status_code == 422
    r = api.post("/jobs", json={"kind": "score", "params": {"strategy": "tta", "model": "al",
                                                             "image_ids": ["hippocampus_008"],
                                                             "strategy_params": {"passes": 2}}})
    assert r.status_code == 202, r.text
    done = wait_job(api, r.json()["id"])
    assert done["state"] == "done" and done["result"]["pool"] == 1 and done["result"]["version"] == 1


def test_new_model_version_scores_again(api: httpx.Client) -> None:
    cached = api.get("/next", params={"strategy": "entropy", "model": "al", "count": 3}).json()
    assert cached["version"] == 1 and cached["source"] == "cache"
    job = api.post("/models/al/train", json={"config": {**TINY_TRAIN, "epochs": 1}, "fine_tune": 1}).json()
    assert wait_job(api, job["id"], 600)["state"] == "done"
    fresh = api.get("/next", params={"strategy": "entropy", "model": "al", "count": 3}).json()
    assert fresh["version"] == 2 and fresh["source"] == "scored" and fresh["scored_now"] == 3
    # rolling back to version 1 finds its scores still cached
    assert api.post("/models/al/rollback").status_code == 200
    back = api.get("/next", params={"strategy": "entropy", "model": "al", "count": 3}).json()
    assert back["version"] == 1 and back["source"] == "cache"


def nifti_array(content: bytes) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)


def _upload(api: httpx.Client, sid: str, mask: np.ndarray, affine: np.ndarray) -> httpx.Response:
    buf = io.BytesIO(gzip.compress(nib.Nifti1Image(mask.astype(np.uint8), affine).to_bytes()))
    return api.put(f"/sessions/{sid}/label", files={"file": ("edit.nii.gz", buf.getvalue(), "application/gzip")})


def test_session_upload_click_undo_redo_save(api: httpx.Client, tmp_path: Path) -> None:
    image_id = "hippocampus_011"
    shape = tuple(api.get(f"/images/{image_id}").json()["shape"])
    affine = nib.Nifti1Image.from_bytes(gzip.decompress(api.get(f"/images/{image_id}/volume").content)).affine
    r = api.post("/sessions", json={"image_id": image_id, "model": "al"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["redo_depth"] == 0
    assert api.post(f"/sessions/{sid}/redo").status_code == 409  # nothing to redo yet

    # 1. a click near one end of the long axis (its ROI, one 32^3 patch, leaves the other end alone)
    click = [shape[0] // 2, 4, shape[2] // 2]
    r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "Anterior", "points": [click]}]})
    assert r.status_code == 200, r.text
    after_click = nifti_array(r.content)

    # 2. brushed edits at the other end, uploaded into the session
    brushed = after_click.copy()
    brushed[10:20, shape[1] - 8 : shape[1] - 2, 10:20] = 2
    brushed[tuple(click)] = 0  # the brush erased the clicked voxel too
    r = _upload(api, sid, brushed, affine)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["id"] == sid and info["undo_depth"] == 2 and info["redo_depth"] == 0
    assert info["changed_voxels"] == int(np.count_nonzero(brushed != after_click)) > 0
    assert np.array_equal(nifti_array(api.get(f"/sessions/{sid}/label").content), brushed)

    # 3. the next click refines on top of the upload: the brushed block (outside its ROI) stays,
    #    and the erased click no longer forces its voxel
    click2 = [shape[0] // 2, 6, shape[2] // 2 + 1]
    r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "Posterior", "points": [click2]}]})
    assert r.status_code == 200, r.text
    on_top = nifti_array(r.content)
    assert on_top[tuple(click2)] == 2
    assert np.array_equal(on_top[10:20, shape[1] - 8 : shape[1] - 2, 10:20], brushed[10:20, shape[1] - 8 : shape[1] - 2, 10:20])
    assert r.headers["x-segloop-clicks"] == "1"  # the clicks before the upload are part of the mask

    # 4. undo: back to the upload, then to before it; redo forward again; then nothing to redo
    assert np.array_equal(nifti_array(api.post(f"/sessions/{sid}/undo").content), brushed)
    assert np.array_equal(nifti_array(api.post(f"/sessions/{sid}/undo").content), after_click)
    assert api.get(f"/sessions/{sid}").json()["redo_depth"] == 2
    r = api.post(f"/sessions/{sid}/redo")
    assert r.status_code == 200 and np.array_equal(nifti_array(r.content), brushed)
    r = api.post(f"/sessions/{sid}/redo")
    assert r.status_code == 200 and np.array_equal(nifti_array(r.content), on_top)
    r = api.post(f"/sessions/{sid}/redo")
    assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_redo"

    # 5. a new click (or upload) after an undo clears what could be redone
    api.post(f"/sessions/{sid}/undo")
    assert api.get(f"/sessions/{sid}").json()["redo_depth"] == 1
    r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "Anterior", "points": [click2]}]})
    assert r.status_code == 200
    assert api.post(f"/sessions/{sid}/redo").status_code == 409
    api.post(f"/sessions/{sid}/undo")
    r = _upload(api, sid, brushed, affine)  # identical to the current mask: nothing changes
    assert r.status_code == 200 and r.json()["changed_voxels"] == 0 and r.json()["redo_depth"] == 1
    edited = brushed.copy()
    edited[0:3, 0:3, 0:3] = 1
    assert _upload(api, sid, edited, affine).json()["redo_depth"] == 0

    # 6. saved: source interactive, the uploaded edits included
    r = api.post(f"/sessions/{sid}/save", json={"base_revision": None})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "interactive"
    saved = nifti_array(api.get(f"/images/{image_id}/labels/{r.json()['revision']}").content)
    assert np.array_equal(saved, edited)
    assert api.delete(f"/sessions/{sid}").status_code == 200
    assert _upload(api, sid, edited, affine).status_code == 404
    assert api.post(f"/sessions/{sid}/redo").status_code == 404


def test_session_upload_is_validated(api: httpx.Client) -> None:
    image_id = "hippocampus_008"
    shape = tuple(api.get(f"/images/{image_id}").json()["shape"])
    affine = nib.Nifti1Image.from_bytes(gzip.decompress(api.get(f"/images/{image_id}/volume").content)).affine
    sid = api.post("/sessions", json={"image_id": image_id, "model": "al"}).json()["id"]
    try:
        before = api.get(f"/sessions/{sid}/label").content
        wrong_shape = np.zeros((shape[0] + 1, shape[1], shape[2]), np.uint8)
        r = _upload(api, sid, wrong_shape, affine)
        assert r.status_code == 422 and "shape" in r.json()["error"]["message"]
        shifted = affine.copy()
        shifted[0, 3] += 5.0
        r = _upload(api, sid, np.zeros(shape, np.uint8), shifted)
        assert r.status_code == 422 and "affine" in r.json()["error"]["message"]
        bad = np.zeros(shape, np.uint8)
        bad[0, 0, 0] = 7
        r = _upload(api, sid, bad, affine)
        assert r.status_code == 422 and "7" in r.json()["error"]["message"]
        r = api.put(f"/sessions/{sid}/label", files={"file": ("x.nii.gz", b"not a nifti")})
        assert r.status_code == 422
        r = api.put(f"/sessions/{sid}/label", files={"other": ("x.nii.gz", b"x")})
        assert r.status_code == 422
        info = api.get(f"/sessions/{sid}").json()
        assert info["undo_depth"] == 0 and info["redo_depth"] == 0
        assert api.get(f"/sessions/{sid}/label").content == before  # nothing changed
    finally:
        api.delete(f"/sessions/{sid}")
    assert api.put("/sessions/nope/label", files={"file": ("x.nii.gz", b"x")}).status_code == 404
