"""Box, lasso and scribble prompts over a real server process: each is one step of the session
(one undo takes it back, redo re-applies it), a save keeps source ``interactive``, bad prompts
answer 422 and change nothing; the MONAI-Label-compatible ``/infer`` runs the graph-cut
scribbles the way MONAI Label's Slicer module sends them.

Data: four hippocampus cases with final labels, the training set of a tiny model."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.integration._harness import TINY_TRAIN, Server, make_data, wait_job

IMAGE = "hippocampus_003"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = make_data(tmp_path_factory.mktemp("prompts"), ("001", "003", "004", "006"))
    srv = Server(data, "--job-threads", "1").wait_ready()
    try:
        with httpx.Client(base_url=srv.api, timeout=300) as c:
            job = c.post("/models/m/train", json={"config": TINY_TRAIN}).json()
            assert wait_job(c, job["id"], 600)["state"] == "done"
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api, timeout=300) as c:
        yield c


def mask(content: bytes) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)


def open_session(api: httpx.Client) -> tuple[str, np.ndarray, tuple[int, int, int]]:
    shape = tuple(api.get(f"/images/{IMAGE}").json()["shape"])
    sid = api.post("/sessions", json={"image_id": IMAGE, "model": "m"}).json()["id"]
    start = mask(api.get(f"/sessions/{sid}/label").content)
    return sid, start, (int(shape[0]), int(shape[1]), int(shape[2]))


def test_box_is_one_step_and_saves_as_interactive(api: httpx.Client) -> None:
    sid, start, shape = open_session(api)
    lo, hi = [4, 8, 4], [shape[0] - 5, shape[1] - 9, shape[2] - 5]
    r = api.post(f"/sessions/{sid}/box", json={"class": "Anterior", "box": [lo, hi]})
    assert r.status_code == 200, r.text
    got = mask(r.content)
    inside = np.zeros(shape, dtype=bool)
    inside[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = True
    assert (got[inside] == 1).any() and not (got[~inside] == 1).any()
    info = api.get(f"/sessions/{sid}").json()
    assert info["undo_depth"] == 1
    assert np.array_equal(mask(api.post(f"/sessions/{sid}/undo").content), start)
    assert np.array_equal(mask(api.post(f"/sessions/{sid}/redo").content), got)
    rev = api.post(f"/sessions/{sid}/save", json={"base_revision": 1}).json()
    assert rev["source"] == "interactive"
    saved = api.get(f"/images/{IMAGE}/labels/{rev['revision']}")
    assert saved.status_code == 200 and np.array_equal(mask(saved.content), got)
    api.delete(f"/sessions/{sid}")


def test_lasso_and_scribbles(api: httpx.Client) -> None:
    sid, start, shape = open_session(api)
    k = shape[2] // 2
    contour = [[8, 12, k], [20, 12, k], [20, 30, k], [8, 30, k]]
    r = api.post(f"/sessions/{sid}/lasso", json={"class": 2, "lasso": contour})
    assert r.status_code == 200, r.text
    got = mask(r.content)
    assert (got[8:21, 12:31, k] == 2).all()
    assert not (got[:, :, k] == 2).sum() > (got[8:21, 12:31, k] == 2).sum()
    for mode in ("guidance", "graphcut"):
        body = {
            "mode": mode,
            "scribbles": [
                {"class": "Posterior", "points": [[10, 14, k], [18, 28, k]]},
                {"class": "background", "points": [[2, 2, 2], [2, shape[1] - 3, 2]], "radius": 1},
            ],
        }
        r = api.post(f"/sessions/{sid}/scribbles", json=body, params={"since": 0})
        assert r.status_code == 200, r.text
        now = mask(api.get(f"/sessions/{sid}/label").content)
        assert now[10, 14, k] == 2 and now[2, 2, 2] == 0
    assert api.get(f"/sessions/{sid}").json()["undo_depth"] == 3
    api.post(f"/sessions/{sid}/undo")
    api.post(f"/sessions/{sid}/undo")
    assert np.array_equal(mask(api.post(f"/sessions/{sid}/undo").content), start)
    api.delete(f"/sessions/{sid}")


@pytest.mark.parametrize(
    ("path", "body", "match"),
    [
        ("box", {"class": "Nope", "box": [[1, 1, 1], [5, 5, 5]]}, "unknown class"),
        ("box", {"class": 1, "box": [[1, 1, 1], [5, 500, 5]]}, "outside the volume"),
        ("lasso", {"class": 1, "lasso": [[1, 1, 1], [5, 5, 5], [8, 2, 3]]}, "one slice"),
        ("scribbles", {"scribbles": [{"class": 1, "points": [[1, 1, 1]]}], "mode": "crf"}, ""),
    ],
)
def test_bad_prompts_answer_422_and_change_nothing(api: httpx.Client, path: str, body: dict, match: str) -> None:
    sid, start, _ = open_session(api)
    r = api.post(f"/sessions/{sid}/{path}", json=body)
    assert r.status_code == 422, r.text
    assert match in r.text
    assert api.get(f"/sessions/{sid}").json()["undo_depth"] == 0
    assert np.array_equal(mask(api.get(f"/sessions/{sid}/label").content), start)
    api.delete(f"/sessions/{sid}")
