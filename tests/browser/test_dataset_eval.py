"""The whole-dataset evaluation in a real browser: the job's means and the images it used appear in
the Evaluate tab, with the images the model version was trained or validated on marked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import AppPage

pytestmark = pytest.mark.slow


def roles_of(api: httpx.Client, model: str) -> dict[str, str]:
    record = api.get(f"/models/{model}").json()
    version = next(v for v in record["versions"] if v["version"] == record["current_version"])
    val = {p[0] for p in version["metrics"].get("val_images", [])}
    return {p[0]: ("validation" if p[0] in val else "train") for p in version["trained_on"]}


def final_ids(api: httpx.Client) -> set[str]:
    """Images with a final label revision, whatever was saved on top of it since (a draft another
    test left): what a dataset evaluation compares with (`segloop.ml.evaluate.evaluate_model`)."""
    items: list[dict[str, Any]] = api.get("/images", params={"limit": 1000}).json()["items"]
    return {im["id"] for im in items
            if any(r["status"] == "final" for r in api.get(f"/images/{im['id']}/labels").json()["items"])}


def test_dataset_evaluation_shows_means_images_and_training_set(app: AppPage, api: httpx.Client) -> None:
    app.open("hippocampus_001")
    app.page.select_option("#model", "tiny")
    app.page.click("[data-tab='evaluate']")
    before = {e["id"] for e in api.get("/evaluations", params={"kind": "model-dataset"}).json()["items"]}
    app.page.click("#ev-model-job")
    app.page.wait_for_function(
        "old => { const v = document.querySelector('#dev-list')?.value; return v && !old.includes(v); }",
        arg=sorted(before), timeout=180_000)
    ev = next(e for e in api.get("/evaluations", params={"kind": "model-dataset"}).json()["items"] if e["id"] not in before)
    assert app.page.input_value("#dev-list") == ev["id"], "the new evaluation is the one shown"
    assert app.page.inner_text("#dev-mean") == f"{ev['result']['mean_dice']:.3f}"
    means = app.page.inner_text("#dev-means")
    for name, m in ev["result"]["mean"].items():
        assert name in means and f"{m['dice']:.3f}" in means
    rows = app.page.eval_on_selector_all("#dev-images tbody tr", "rs => rs.map(r => [r.dataset.id, r.dataset.role])")
    used = {p["image_id"] for p in ev["result"]["per_image"]}
    assert {r[0] for r in rows} == used == final_ids(api)
    roles = roles_of(api, "tiny")
    assert roles, "the tiny model was trained on some of these images"
    assert {i: r for i, r in rows} == {i: roles.get(i, "unseen") for i in used}
    seen = sum(1 for i in used if i in roles)
    assert f"{seen} of {len(used)} images were used" in app.page.inner_text("#dev-seen")
    app.shot("dataset-evaluation")

    # only images the model never saw
    unseen = sorted(final_ids(api) - set(roles))
    app.page.check("#dev-unseen")
    app.page.click("#ev-model-job")
    if not unseen:
        app.page.wait_for_function("() => document.querySelector('#notices').innerText.includes('never saw') "
                                   "|| document.querySelector('#notices').innerText.includes('used to train')")
        assert "used to train or validate tiny" in app.notices()
        return
    app.page.wait_for_function("n => document.querySelectorAll('#dev-images tbody tr').length === n "
                               "&& !document.querySelector('#dev-images [data-role=train]')", arg=len(unseen),
                               timeout=180_000)
    assert "None of these" in app.page.inner_text("#dev-seen")
