"""The whole loop over HTTP against a real server process:
upload → train (events over WebSocket until done) → infer → click → save (stale save → 409)
→ next image → evaluate (revision and model, discrepancy map, history) → jobs from another client."""

from __future__ import annotations

import gzip
import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
from websockets.sync.client import connect

from tests.integration._harness import CASES, TINY_TRAIN, Server, hippo_image, wait_job


def nifti_array(content: bytes) -> np.ndarray:
    raw = gzip.decompress(content)
    img = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(img.dataobj)


def test_health_version_openapi(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/version").json()["api"] == "v1"
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/images", "/api/v1/models/{name}/train", "/api/v1/sessions/{session_id}/clicks",
                 "/api/v1/evaluations", "/api/v1/jobs/{job_id}/cancel", "/api/v1/events"):
        assert path in schema["paths"], path


def test_errors_are_json(client: httpx.Client) -> None:
    r = client.get("/images/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/images", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid"


class EventCollector:
    """Collects events from the WebSocket in a thread until a job reaches a terminal state."""

    def __init__(self, server: Server) -> None:
        self.url = f"ws://127.0.0.1:{server.port}/api/v1/events/ws"
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.job_id: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "WebSocket did not open"

    def _run(self) -> None:
        with connect(self.url, open_timeout=30) as ws:
            first = json.loads(ws.recv(timeout=30))
            assert first["type"] == "stream.open"
            self.ready.set()
            while not self.done.is_set():
                try:
                    event = json.loads(ws.recv(timeout=600))
                except TimeoutError:
                    return
                self.events.append(event)
                data = event.get("data", {})
                if (event["type"] == "job.state" and data.get("id") == self.job_id
                        and data.get("state") in ("done", "failed", "cancelled", "interrupted")):
                    # the model.version event is published before the job's final state
                    self.done.set()


def test_whole_loop(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    total_before = client.get("/images").json()["total"]

    # --- upload one new image (streamed multipart) ---------------------------------------------
    path = hippo_image(CASES[5])
    with open(path, "rb") as fh:
        r = client.post("/images", files={"file": (path.name, fh, "application/gzip")})
    assert r.status_code == 201, r.text
    uploaded = r.json()["images"][0]
    image_id = uploaded["id"]
    assert uploaded["label_state"] == "none"
    assert client.get("/images").json()["total"] == total_before + 1
    listed = client.get("/images", params={"label_state": "none"}).json()
    assert [i["id"] for i in listed["items"]] == [image_id]
    page = client.get("/images", params={"limit": 2, "offset": 1}).json()
    assert len(page["items"]) == 2 and page["offset"] == 1

    vol = client.get(f"/images/{image_id}/volume")
    assert vol.status_code == 200 and vol.headers["content-type"] == "application/gzip"
    whole = nifti_array(vol.content)
    assert whole.shape == tuple(uploaded["shape"])
    # the first image a viewer can show: the middle slice, cut from the image
    preview = client.get(f"/images/{image_id}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "application/gzip"
    middle = whole.shape[2] // 2
    assert np.array_equal(nifti_array(preview.content), whole[:, :, middle:middle + 1])
    assert client.get("/images/no-such-image/preview").status_code == 404

    # --- train, following the live events over WebSocket --------------------------------------
    # several workers need jobs on Ray: a local-jobs server refuses at once, before any job
    jobs_before = client.get("/jobs").json()["total"]
    many = client.post("/models/hippo/train", json={"config": {**TINY_TRAIN, "workers": 2}})
    assert many.status_code == 422 and "--jobs ray" in many.json()["error"]["message"], many.text
    assert client.get("/jobs").json()["total"] == jobs_before
    collector = EventCollector(server)
    r = client.post("/models/hippo/train", json={"config": TINY_TRAIN})
    assert r.status_code == 202, r.text
    job = r.json()
    collector.job_id = job["id"]
    # a second training request for the same model while the first is active → 409
    second = client.post("/models/hippo/train", json={"config": TINY_TRAIN})
    if second.status_code != 202:
        assert second.status_code == 409 and second.json()["error"]["job_id"] == job["id"]
    else:  # the first one already finished (fast machine): then this is a legitimate second run
        wait_job(client, second.json()["id"])
    collector.done.wait(600)
    assert collector.done.is_set(), "no terminal job.state event"
    types = [e["type"] for e in collector.events]
    progress = [e["data"] for e in collector.events if e["type"] == "job.progress" and e["data"]["job_id"] == job["id"]]
    assert progress and any(p.get("epoch") for p in progress)
    assert any(p.get("val_dice") for p in progress)
    assert "model.version" in types
    final = wait_job(client, job["id"])
    assert final["state"] == "done", final
    assert final["metrics"], "no metrics stream"
    assert client.get(f"/jobs/{job['id']}/log").json()["items"]

    model = client.get("/models/hippo").json()
    assert model["current_version"] >= 1 and model["versions"]
    assert any(m["name"] == "hippo" for m in client.get("/models").json()["items"])

    # --- automatic inference ----------------------------------------------------------------------
    r = client.post("/models/hippo/infer", json={"image_id": image_id})
    assert r.status_code == 200, r.text
    auto = nifti_array(r.content)
    assert auto.shape == tuple(uploaded["shape"])
    assert set(np.unique(auto)) <= {0, 1, 2}

    # --- interactive session: click, undo, click, save ------------------------------------------
    r = client.post("/sessions", json={"image_id": image_id, "model": "hippo"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    centre = [s // 2 for s in uploaded["shape"]]
    r = client.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "Anterior", "points": [centre]}]})
    assert r.status_code == 200, r.text
    clicked = nifti_array(r.content)
    assert clicked[tuple(centre)] == 1  # a positive click labels its voxel
    assert r.headers["x-segloop-clicks"] == "1"
    r = client.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "background", "points": [centre]}]})
    assert nifti_array(r.content)[tuple(centre)] == 0
    r = client.post(f"/sessions/{sid}/undo")
    assert nifti_array(r.content)[tuple(centre)] == 1
    bad = client.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": "Nope", "points": [centre]}]})
    assert bad.status_code == 422 and "Nope" in bad.json()["error"]["message"]
    outside = client.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": 1, "points": [[999, 0, 0]]}]})
    assert outside.status_code == 422

    r = client.post(f"/sessions/{sid}/save", json={"base_revision": None})
    assert r.status_code == 201, r.text
    rev1 = r.json()
    assert rev1["revision"] == 1 and rev1["source"] == "interactive"
    # a second client still editing from "no revision" → stale → 409 with the current revision
    stale = client.post(f"/sessions/{sid}/save", json={"base_revision": None})
    assert stale.status_code == 409 and stale.json()["error"]["current_revision"] == 1
    # saving a label file based on the current revision works; on the old base it conflicts
    buf = io.BytesIO(gzip.compress(nib.Nifti1Image(clicked.astype(np.uint8), nib.load(str(path)).affine).to_bytes()))
    r = client.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", buf.getvalue())}, data={"base_revision": "1"})
    assert r.status_code == 201, r.text
    r = client.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", buf.getvalue())}, data={"base_revision": "1"})
    assert r.status_code == 409 and r.json()["error"]["current_revision"] == 2
    revs = client.get(f"/images/{image_id}/labels").json()["items"]
    assert [x["revision"] for x in revs] == [1, 2]
    got = client.get(f"/images/{image_id}/labels/latest")
    assert got.headers["x-segloop-revision"] == "2"
    r = client.post(f"/images/{image_id}/labels/2/final")
    assert r.status_code == 200 and r.json()["status"] == "final"
    assert client.delete(f"/sessions/{sid}").status_code == 200
    assert client.post(f"/sessions/{sid}/undo").status_code == 404

    # --- next image -------------------------------------------------------------------------------
    r = client.get("/next", params={"strategy": "sequential"})
    assert r.status_code == 200
    assert r.json()["items"] == [] and r.json()["remaining_unlabeled"] == 0  # every image has a label now
    assert client.get("/next", params={"strategy": "entropy"}).status_code == 422

    # --- evaluation: a revision against a reference, and the model --------------------------------
    ref_image = "hippocampus_001"
    r = client.post("/evaluations", json={"image_id": ref_image, "model": "hippo"})
    assert r.status_code == 201, r.text
    ev = r.json()
    assert set(ev["result"]["classes"]) == {"Anterior", "Posterior"}
    assert 0.0 <= ev["result"]["mean"]["dice"] <= 1.0
    dmap = nifti_array(httpx.get(server.url + ev["discrepancy_url"], timeout=60).content)
    assert dmap.max() <= 6 and dmap.shape == tuple(client.get(f"/images/{ref_image}").json()["shape"])
    r = client.post("/evaluations", json={"image_id": image_id, "revision": 1, "reference_revision": 2})
    assert r.status_code == 201, r.text
    history = client.get("/evaluations").json()["items"]
    assert {e["id"] for e in history} >= {ev["id"], r.json()["id"]}

    r = client.post("/models/hippo/evaluate", json={})
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    assert done["state"] == "done", done
    assert any(e["kind"] == "model-dataset" for e in client.get("/evaluations").json()["items"])

    # --- jobs are shared: a second client sees them and can cancel one ----------------------------
    long_cfg = {**TINY_TRAIN, "epochs": 500}
    r = client.post("/models/other/train", json={"config": long_cfg})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    with httpx.Client(base_url=server.api, timeout=60) as other:
        assert jid in [j["id"] for j in other.get("/jobs").json()["items"]]
        assert other.post(f"/jobs/{jid}/cancel").status_code == 200
    cancelled = wait_job(client, jid)
    assert cancelled["state"] == "cancelled"
    assert client.post(f"/jobs/{jid}/cancel").status_code == 409
    # the cancelled training wrote no version
    assert client.get("/models/other").status_code == 404 or not client.get("/models/other").json()["versions"]


def test_sse_stream_delivers_events(server: Server, client: httpx.Client) -> None:
    with httpx.Client(base_url=server.api, timeout=60) as sse, sse.stream(
        "GET", "/events", params={"types": "schema.changed"}
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        assert next(lines).startswith(":")  # the stream is open: now trigger an event
        schema = client.get("/schema").json()
        assert client.put("/schema", json=schema).status_code == 200
        for line in lines:
            if line.startswith("event:"):
                assert line == "event: schema.changed"
                break
