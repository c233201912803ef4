"""MONAI Label's own Python client (``monailabel.client``, installed without its dependencies)
drives a real segloop server: info, upload_image, next_sample, infer (automatic and with
clicks), save_label, datastore, download_label, sessions, train_start / train_status / train_stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.compat.conftest import MODEL, wait_training_done
from tests.integration._harness import CASES, Server, hippo_image

NEW_CASE = CASES[5]  # not in the data folder: uploaded by the client
NEW_ID = "case-upload"


def load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    img: Any = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def test_training_through_the_client(trained: dict[str, Any], ml: Any) -> None:
    task = trained["task"]
    assert task["id"] and task["status"] == "RUNNING"
    status = ml.train_status()
    assert status["status"] == "DONE" and status["id"] == task["id"]
    assert ml.train_status(check_if_running=True) is False
    info = ml.info()
    assert info["models"][MODEL]["type"] == "segmentation"
    assert info["models"][MODEL + "_interactive"]["type"] == "deepgrow"
    assert info["models"][MODEL]["labels"] == {"Anterior": 1, "Posterior": 2}
    assert MODEL in info["trainers"] and "entropy" in info["strategies"]
    assert info["train_stats"][MODEL]["best_metric"] >= 0


def test_upload_next_sample_and_datastore(trained: dict[str, Any], ml: Any, compat_server: Server) -> None:
    before = ml.info()["datastore"]
    assert before == {"total": 5, "completed": 5, "label_tags": {"final": 5, "latest": 5, "original": 5}}
    # every image has a final label: nothing left to annotate, and that is not an error
    assert ml.next_sample("random", {}) == {}

    assert ml.upload_image(str(hippo_image(NEW_CASE)), NEW_ID) == {"image": NEW_ID}
    # the same content again under the same id is the same image (Slicer re-uploads before saving)
    assert ml.upload_image(str(hippo_image(NEW_CASE)), NEW_ID) == {"image": NEW_ID}
    native = httpx.get(f"{compat_server.api}/images/{NEW_ID}").json()
    assert native["label_state"] == "none"

    sample = ml.next_sample("random", {})
    assert sample["id"] == NEW_ID and sample["name"] == f"{NEW_ID}.nii.gz"
    ranked = ml.next_sample("entropy", {})  # one image without a score: scored inline, model-based
    assert ranked["id"] == NEW_ID and ranked["score"] is not None and "fallback" not in ranked["segloop"]
    assert ranked["segloop"]["model"] == MODEL
    # a batch-mode strategy: the pool image and the 5 labelled ones described at once, then ordered
    typical = ml.next_sample("typiclust", {})
    assert typical["id"] == NEW_ID and typical["score"] is not None and "fallback" not in typical["segloop"]
    assert typical["segloop"]["unscored"] == 6 and typical["segloop"]["scored_now"] == 6
    cached = httpx.get(f"{compat_server.url}/scoring/typiclust").json()
    assert [s["id"] for s in cached["scores"]] == [NEW_ID] and cached["missing"] == []

    ds = ml.datastore()
    assert set(ds["objects"]) == {"hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006",
                                  "hippocampus_007", NEW_ID}
    assert ds["objects"][NEW_ID]["labels"] == {}
    assert set(ds["objects"]["hippocampus_001"]["labels"]) == {"final", "latest", "original"}


def test_infer_automatic_then_clicks_change_the_mask_where_clicked(trained: dict[str, Any], ml: Any) -> None:
    image, affine = load(hippo_image(NEW_CASE))
    path, params = ml.infer(MODEL, NEW_ID, {})
    auto, auto_affine = load(path)
    assert auto.shape == image.shape and np.allclose(auto_affine, affine, atol=1e-4)
    assert params["label_names"] == {"Anterior": 1, "Posterior": 2}
    assert params["segloop"]["clicks"] == 0 and set(params["latencies"]) >= {"total", "infer"}
    # the network's own time, as the native routes report it (X-Segloop-Seconds): the benchmark
    # tells the route's overhead from the model's time with it
    assert 0 < params["segloop"]["model_seconds"] <= params["latencies"]["total"]

    # a foreground click where the automatic mask has no Anterior ...
    candidates = np.argwhere(auto != 1)
    fg = tuple(int(v) for v in candidates[len(candidates) // 2])
    path, params = ml.infer(MODEL, NEW_ID, {"label": "Anterior", "foreground": [list(fg)], "background": []})
    one, _ = load(path)
    assert params["segloop"]["clicks"] == 1
    assert one[fg] == 1 and auto[fg] != 1
    # ... then a background click on a voxel the mask labels (the request repeats the first click)
    labelled = [tuple(int(v) for v in p) for p in np.argwhere(one > 0) if tuple(int(v) for v in p) != fg]
    assert labelled, "nothing but the clicked voxel is labelled"
    bg = labelled[len(labelled) // 2]
    path, params = ml.infer(MODEL, NEW_ID, {"label": "Anterior", "foreground": [list(fg)], "background": [list(bg)]})
    two, _ = load(path)
    assert params["segloop"]["clicks"] == 2
    assert two[fg] == 1 and two[bg] == 0 and one[bg] != 0

    # DeepEdit shape (per-label lists) and the DeepGrow alias (binary mask of the label)
    path, _ = ml.infer(MODEL, NEW_ID, {"Posterior": [list(fg)], "background": []})
    post, _ = load(path)
    assert post[fg] == 2
    path, params = ml.infer(MODEL + "_interactive", NEW_ID, {"label": "Anterior", "foreground": [list(fg)],
                                                             "background": [list(bg)]})
    binary, _ = load(path)
    assert params["label_names"] == {"Anterior": 1}
    assert set(np.unique(binary)) <= {0, 1} and binary[fg] == 1 and binary[bg] == 0

    with pytest.raises(Exception) as err:  # noqa: B017 - the client raises its own exception type
        ml.infer(MODEL, NEW_ID, {"label": "Anterior", "foreground": [[999, 0, 0]]})
    assert "outside the volume" in str(getattr(err.value, "msg", err.value))


def test_save_label_becomes_a_revision_and_downloads(trained: dict[str, Any], ml: Any, compat_server: Server,
                                                     tmp_path: Path) -> None:
    path, _ = ml.infer(MODEL, NEW_ID, {})
    saved, _ = load(path)
    answer = ml.save_label(NEW_ID, path, tag="final")
    assert answer["image"] == NEW_ID and answer["status"] == "final" and answer["revision"] == 1
    revisions = httpx.get(f"{compat_server.api}/images/{NEW_ID}/labels").json()["items"]
    assert [(r["revision"], r["status"], r["source"], r["author"]) for r in revisions] == [(1, "final", "manual", "local")]
    assert ml.info()["datastore"]["completed"] == 6
    assert ml.next_sample("random", {}) == {}  # the uploaded image is final now: nothing left

    # another tag saves a draft on top of the latest (MONAI Label's clients know no revisions)
    assert ml.save_label(NEW_ID, path, tag="draft-ish")["revision"] == 2
    revisions = httpx.get(f"{compat_server.api}/images/{NEW_ID}/labels").json()["items"]
    assert [(r["revision"], r["parent"], r["status"]) for r in revisions] == [(1, None, "final"), (2, 1, "draft")]
    assert ml.next_sample("random", {})["id"] == NEW_ID  # its latest label is a draft again

    got, _ = load(ml.download_label(NEW_ID, "final"))  # the latest *final* revision
    assert np.array_equal(got, saved)
    labels = ml.datastore()["objects"][NEW_ID]["labels"]
    assert (labels["final"]["info"]["revision"], labels["latest"]["info"]["revision"]) == (1, 2)
    assert ml.save_label(NEW_ID, path)["revision"] == 3  # MONAI Label's default tag: final
    assert ml.next_sample("random", {}) == {}


def test_session_create_infer_remove(trained: dict[str, Any], ml: Any) -> None:
    created = ml.create_session(str(hippo_image(NEW_CASE)))
    sid = created["session_id"]
    assert created["session_info"]["meta"]["shape"] == list(load(hippo_image(NEW_CASE))[0].shape)
    assert ml.get_session(sid)["name"] == created["session_info"]["name"]
    path, params = ml.infer(MODEL, "", {"label": "Posterior", "foreground": [[10, 10, 10]]}, session_id=sid)
    mask, _ = load(path)
    assert mask[10, 10, 10] == 2 and params["segloop"]["session_id"] == sid
    assert ml.remove_session(sid)["name"] == created["session_info"]["name"]
    with pytest.raises(Exception):  # noqa: B017
        ml.get_session(sid)


def test_train_start_status_stop(trained: dict[str, Any], ml: Any, compat_server: Server) -> None:
    before = httpx.get(f"{compat_server.api}/models/{MODEL}").json()["current_version"]
    task = ml.train_start(MODEL, {**{"epochs": 200, "batch_size": 2, "val_split": 0.34}, "client_id": "slicer"})
    assert task["segloop"]["fine_tune"] == before  # "update model" continues from the current version
    assert task["segloop"]["ignored_params"] == []
    assert ml.train_status(check_if_running=True) is True
    stopped = ml.train_stop()
    assert stopped["id"] == task["id"]
    wait_training_done(ml)
    assert ml.train_status()["status"] in ("STOPPED", "DONE")
    assert ml.train_stop() == {}
    assert httpx.get(f"{compat_server.api}/models/{MODEL}").json()["current_version"] == before
