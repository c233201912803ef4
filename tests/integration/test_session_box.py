"""The compact click response over a real server: with ``?since=N`` the clicks, undo and redo
routes answer the box that changed since step N; applied to the client's mask of step N it gives
exactly the whole mask the default response gives. A step the server cannot answer from (none,
unknown) gets the whole mask; without ``since`` nothing changed.

Data: four hippocampus cases with final labels, the training set of a tiny model."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator

import httpx
import nibabel as nib
import numpy as np
import pytest

from segloop.server.maskcodec import BOX_MEDIA_TYPE, apply_box, parse_box
from tests.integration._harness import TINY_TRAIN, Server, make_data, wait_job


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = make_data(tmp_path_factory.mktemp("box"), ("001", "003", "004", "006"))
    srv = Server(data, "--job-threads", "1").wait_ready()
    try:
        with httpx.Client(base_url=srv.api, timeout=300) as c:
            job = c.post("/models/m/train", json={"config": TINY_TRAIN}).json()
            assert wait_job(c, job["id"], 600)["state"] == "done"
            yield c
    finally:
        srv.stop()


def nifti_array(content: bytes) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)


class Client:
    """What the web app does: hold the mask of one step, ask for what changed since."""

    def __init__(self, api: httpx.Client, sid: str) -> None:
        self.api, self.sid = api, sid
        self.step = 0
        self.mask: np.ndarray | None = None

    def call(self, path: str, body: dict | None = None, since: int | None = None) -> httpx.Response:
        since = self.step if since is None else since
        r = self.api.post(f"/sessions/{self.sid}/{path}", params={"since": since}, json=body or {})
        assert r.status_code == 200, r.text
        assert r.headers["server-timing" if path == "clicks" else "x-segloop-step"]
        if r.headers["content-type"] == BOX_MEDIA_TYPE:
            assert self.mask is not None and int(r.headers["x-segloop-base-step"]) == since == self.step
            apply_box(self.mask, parse_box(r.headers["x-segloop-box"]), r.content)
        else:
            assert r.headers["content-type"] == "application/gzip"
            self.mask = nifti_array(r.content).copy()
        self.step = int(r.headers["x-segloop-step"])
        # the whole mask, as the default response gives it
        assert np.array_equal(self.mask, nifti_array(self.api.get(f"/sessions/{self.sid}/label").content))
        return r


def test_box_responses_rebuild_the_whole_mask(api: httpx.Client) -> None:
    image_id = "hippocampus_003"
    shape = tuple(api.get(f"/images/{image_id}").json()["shape"])
    sid = api.post("/sessions", json={"image_id": image_id, "model": "m"}).json()["id"]
    c = Client(api, sid)
    clicks = [[shape[0] // 2, 4, shape[2] // 2], [shape[0] // 2, shape[1] - 5, shape[2] // 2], [3, shape[1] // 2, 3]]

    # the first call: the client holds nothing (since=0), the whole mask comes back with its step
    r = c.call("clicks", {"clicks": [{"class": 1, "points": [clicks[0]]}]})
    assert r.headers["content-type"] == "application/gzip"
    first_step = c.step
    assert first_step >= 2

    # clicks, undo, redo: boxes, smaller than the whole mask
    for n, p in enumerate(clicks[1:]):
        r = c.call("clicks", {"clicks": [{"class": "background" if n else 2, "points": [p]}]})
        assert r.headers["content-type"] == BOX_MEDIA_TYPE
        assert len(r.content) < 0.5 * shape[0] * shape[1] * shape[2]
    after = c.mask.copy()  # type: ignore[union-attr]
    for path in ("undo", "undo", "redo", "redo"):
        r = c.call(path)
        assert r.headers["content-type"] == BOX_MEDIA_TYPE, path
    assert np.array_equal(c.mask, after)
    # nothing to undo is no change: an empty box
    for _ in range(3):
        c.call("undo")
    r = c.call("undo")
    assert r.headers["content-type"] == BOX_MEDIA_TYPE and r.headers["x-segloop-box"] == "0,0,0,0,0,0"
    assert int(r.headers["x-segloop-base-step"]) == int(r.headers["x-segloop-step"])

    # an uploaded (brushed) mask between: the next box spans the upload too
    c.call("redo")
    brushed = c.mask.copy()  # type: ignore[union-attr]
    brushed[0:4, 0:4, 0:4] = 2
    affine = nib.Nifti1Image.from_bytes(gzip.decompress(api.get(f"/images/{image_id}/volume").content)).affine
    buf = io.BytesIO(gzip.compress(nib.Nifti1Image(brushed, affine).to_bytes()))
    assert api.put(f"/sessions/{sid}/label", files={"file": ("e.nii.gz", buf.getvalue(), "application/gzip")}).status_code == 200
    before = c.step  # the client applies its strokes itself; it still names the step before them
    c.mask = brushed.copy()
    c.call("clicks", {"clicks": [{"class": 1, "points": [clicks[0]]}]}, since=before)
    assert c.mask[0, 0, 0] == 2

    # a step the server cannot answer from: the whole mask, with the step
    for stale in (0, c.step + 5):
        c.mask = None
        held = c.step
        c.step = stale
        r = c.call("redo" if stale else "undo", since=stale)
        assert r.headers["content-type"] == "application/gzip" and int(r.headers["x-segloop-step"]) >= held
    api.delete(f"/sessions/{sid}")


def test_without_since_the_response_is_unchanged(api: httpx.Client) -> None:
    image_id = "hippocampus_004"
    sid = api.post("/sessions", json={"image_id": image_id, "model": "m"}).json()["id"]
    r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": 1, "points": [[5, 5, 5]]}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert "x-segloop-step" not in r.headers and "x-segloop-box" not in r.headers
    assert set(r.headers["server-timing"].replace(" ", "").split(",")) and "encode;dur=" in r.headers["server-timing"]
    assert r.content == api.get(f"/sessions/{sid}/label").content  # the same gzip NIfTI bytes
    for path in ("undo", "redo"):
        r = api.post(f"/sessions/{sid}/{path}")
        assert r.headers["content-type"] == "application/gzip" and "x-segloop-step" not in r.headers
    api.delete(f"/sessions/{sid}")


def test_clicks_see_a_schema_change_at_once(api: httpx.Client) -> None:
    """Clicks parse class names with a cached schema: a renamed class is known from the next click."""
    old = api.get("/schema").json()
    sid = api.post("/sessions", json={"image_id": "hippocampus_006", "model": "m"}).json()["id"]
    try:
        names = {c["value"]: c["name"] for c in old["classes"] if c["value"]}
        first = names[1]
        assert api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": first, "points": [[5, 5, 5]]}]}).status_code == 200
        renamed = [{**c, "name": f"{c['name']}-renamed"} if c["value"] else c for c in old["classes"]]
        assert api.put("/schema", json={"classes": renamed}).status_code == 200
        r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": first, "points": [[6, 6, 6]]}]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_clicks"
        r = api.post(f"/sessions/{sid}/clicks", json={"clicks": [{"class": f"{first}-renamed", "points": [[6, 6, 6]]}]})
        assert r.status_code == 200, r.text
    finally:
        api.put("/schema", json={"classes": old["classes"]})
        api.delete(f"/sessions/{sid}")
