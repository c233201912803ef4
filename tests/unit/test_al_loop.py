"""ActiveLearningLoop: select -> virtual user -> save -> background retrain -> switch only when better."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from segloop.loop import ActiveLearningLoop, VirtualAnnotator
from segloop.ml.training import train
from tests.unit.al_synthetic import make_store, tiny_train_config


@pytest.fixture()
def setup(tmp_path: Any) -> dict[str, Any]:
    store, train_ids, pool_ids, refs = make_store(tmp_path / "data", n_train=3, n_pool=4)
    train(store, "seg", tiny_train_config(), revisions=[(i, 1) for i in train_ids[:2]], device="cpu")
    return {"store": store, "train": train_ids, "pool": pool_ids, "refs": refs}


def test_round_saves_virtual_user_labels_and_retrains_in_background(setup: dict[str, Any]) -> None:
    store, refs = setup["store"], setup["refs"]
    events: list[str] = []
    user = VirtualAnnotator(refs, clicks_per_class=2, satisfied_dice=None, seed=0)
    loop = ActiveLearningLoop(
        store, "seg", "entropy", user, train_config=tiny_train_config(epochs=1), retrain_every=2,
        validation_ids=[setup["train"][2]], device="cpu", on_event=lambda kind, data: events.append(kind),
    )
    assert loop.current_version == 1 and loop.new_labels() == 0
    result = loop.run_round(2)
    assert len(result.annotations) == 2 and result.ranking.version == 1
    for ann in result.annotations:
        rev = store.get_revision(ann.image_id)
        assert rev.status == "final" and rev.author == "virtual-user" and rev.source == "interactive"
        assert ann.clicks == sum(ann.clicks_per_class.values()) <= 2 * 2
        assert store.load_label(ann.image_id).array.shape == refs[ann.image_id].shape
    # what is saved is the session's result, not the reference
    assert any(not np.array_equal(store.load_label(a.image_id).array, refs[a.image_id]) for a in result.annotations)
    assert "training_started" in events  # K=2 labels arrived: a training started by itself
    # annotation goes on while it trains
    nxt = loop.select(1).ids()[0]
    assert loop.annotate(nxt).model_version == 1
    outcome = loop.wait_for_training()
    assert outcome is not None and outcome.error is None and outcome.version == 2
    assert outcome.fine_tuned_from == 1 and outcome.trained_on == 4  # 2 reference + 2 virtual user (not the validation image)
    assert outcome.old_score is not None and outcome.new_score is not None
    # one validation image: the default safety gate refuses only a collapse (worse by > 0.05)
    assert outcome.gate is not None and outcome.gate["rule"] == "safety" and outcome.gate["images"] == 1
    assert outcome.accepted == (outcome.new_score >= outcome.old_score - 0.05)
    assert store.get_model("seg").current_version == loop.current_version == (2 if outcome.accepted else 1)
    loop.close()


def test_worse_version_is_not_switched_to(setup: dict[str, Any]) -> None:
    store = setup["store"]
    user = VirtualAnnotator(setup["refs"], clicks_per_class=1)
    loop = ActiveLearningLoop(
        store, "seg", "random", user, train_config=tiny_train_config(epochs=1), retrain_every=1, auto_train=False,
        fine_tune=False, validation_ids=[setup["train"][2]], min_improvement=2.0, gate="strict", device="cpu",
    )
    loop.annotate(setup["pool"][0])
    assert loop.new_labels() == 1 and not loop.training_running
    assert loop.start_training()
    outcome = loop.wait_for_training()
    assert outcome is not None and outcome.version == 2 and outcome.fine_tuned_from is None
    assert not outcome.accepted  # a Dice gain of 2.0 is impossible
    assert loop.current_version == 1 and store.get_model("seg").current_version == 1
    assert not loop.start_training()  # nothing new since
    with pytest.raises(ValueError, match="retrain_every"):
        ActiveLearningLoop(store, "seg", "random", user, train_config=tiny_train_config(), retrain_every=0)


def test_unchecked_version_never_current_when_train_takes_make_current(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import segloop.ml.training as training
    from segloop.loop.active_loop import accepts_make_current

    store = setup["store"]
    real = training.train
    seen: list[tuple[bool, int | None]] = []

    def train_mc(store: Any, model: str, config: Any, *, make_current: bool = True, **kw: Any) -> Any:
        before = store.get_model(model).current_version
        version = real(store, model, config, **kw)
        if not make_current:  # a train() that adds the version without making it current
            store.set_current_version(model, before)
        seen.append((make_current, store.get_model(model).current_version))
        return version

    monkeypatch.setattr(training, "train", train_mc)
    assert accepts_make_current(train_mc) and not accepts_make_current(lambda *a, **kw: None)
    user = VirtualAnnotator(setup["refs"], clicks_per_class=1)
    loop = ActiveLearningLoop(
        store, "seg", "random", user, train_config=tiny_train_config(epochs=1), retrain_every=1, auto_train=False,
        validation_ids=[setup["train"][2]], min_improvement=2.0, gate="strict", device="cpu",
    )
    loop.annotate(setup["pool"][0])
    assert loop.start_training()
    lost = loop.wait_for_training()
    assert lost is not None and lost.version == 2 and not lost.accepted and lost.made_current_unchecked is False
    assert seen == [(False, 1)] and store.get_model("seg").current_version == 1
    loop.min_improvement = -2.0  # any version wins: the loop itself makes it current after the check
    loop.annotate(setup["pool"][1])
    assert loop.start_training()
    won = loop.wait_for_training()
    assert won is not None and won.accepted and won.version == 3
    assert seen[-1] == (False, 1) and store.get_model("seg").current_version == loop.current_version == 3


def test_brush_finish_saves_the_reference_and_counts_the_strokes(setup: dict[str, Any]) -> None:
    from segloop.loop.annotator import residual_strokes

    store, refs = setup["store"], setup["refs"]
    clicker = VirtualAnnotator(refs, clicks_per_class=1, satisfied_dice=None, seed=0, finish="clicks")
    brusher = VirtualAnnotator(refs, clicks_per_class=1, satisfied_dice=None, seed=0, finish="brush")
    loop = ActiveLearningLoop(store, "seg", "random", brusher, train_config=tiny_train_config(epochs=1),
                              auto_train=False, device="cpu")
    image_id = setup["pool"][0]
    from segloop.loop.annotator import AnnotationTask

    task = AnnotationTask(image_id, store.load_image(image_id), loop.predictor(), None)
    clicked, brushed = clicker.annotate(task), brusher.annotate(task)
    # same clicks, same clicked result; brushing turns it into the reference, one stroke per wrong (class, slice)
    assert brushed.clicks == clicked.clicks and brushed.clicked_dice == clicked.clicked_dice
    assert np.array_equal(brushed.label, refs[image_id]) and clicked.strokes == 0
    assert brushed.strokes == residual_strokes(clicked.label, refs[image_id], [1, 2]) > 0
    outcome = loop.annotate(image_id)
    assert np.array_equal(store.load_label(image_id).array, refs[image_id])
    assert outcome.strokes == brushed.strokes and set(outcome.clicked_dice) == {1, 2}
    with pytest.raises(ValueError, match="finish"):
        VirtualAnnotator(refs, finish="lasso")
    loop.close()


def test_residual_strokes_count_classes_per_slice() -> None:
    from segloop.loop.annotator import residual_strokes

    ref = np.zeros((4, 4, 5), np.uint8)
    ref[1:3, 1:3, 1:4] = 1
    ref[0, 0, 4] = 2
    got = ref.copy()
    assert residual_strokes(got, ref, [1, 2]) == 0
    got[1, 1, 1] = 0  # class 1 wrong on slice 1
    got[0, 0, 4] = 1  # class 1 and class 2 wrong on slice 4
    assert residual_strokes(got, ref, [1, 2], tolerance=0) == 3
    # within a voxel of the outline: class 1's corner on slice 1 and class 2's one voxel are
    # boundary disagreement; class 1 where the reference has none of it is not
    assert residual_strokes(got, ref, [1, 2]) == 1
    with pytest.raises(ValueError, match="shape"):
        residual_strokes(got[:, :, :4], ref, [1])
    with pytest.raises(ValueError, match="tolerance"):
        residual_strokes(got, ref, [1], tolerance=-1)


def test_residual_strokes_leave_boundary_disagreement_and_count_real_errors() -> None:
    from segloop.loop.annotator import residual_strokes

    ref = np.zeros((20, 20, 4), np.uint8)
    ref[5:15, 5:15, :] = 1
    got = ref.copy()
    got[4, 5:15, 0] = 1  # slice 0: the outline one voxel too far out: tolerated
    got[5:15, 5, 1] = 0  # slice 1: one voxel too far in: tolerated
    got[8:11, 8:11, 2] = 0  # slice 2: a hole in the middle, 3 voxels from the outline: a stroke
    got[17:19, 17:19, 3] = 1  # slice 3: a lump 2 voxels outside the outline: a stroke
    assert residual_strokes(got, ref, [1]) == 2
    assert residual_strokes(got, ref, [1], tolerance=0) == 4
    assert residual_strokes(got, ref, [1], tolerance=4) == 1  # the lump is within 4 voxels, the hole reaches 5 in
