"""Strategies and pool ranking with a tiny trained model in a real LocalDatastore."""

from __future__ import annotations

import shutil
import threading
from typing import Any

import numpy as np
import pytest

from segloop.activelearning import get_strategy, strategy_names
from segloop.activelearning.cache import ScoreCache
from segloop.activelearning.ranking import RankingCancelled, rank_pool
from segloop.imaging.volume import Volume
from segloop.ml.predictor import Predictor
from segloop.ml.training import train
from tests.unit.al_synthetic import SHAPE, make_store, synthetic_case, tiny_train_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store, train_ids, pool_ids, refs = make_store(tmp_path_factory.mktemp("alstore"))
    rng = np.random.default_rng(42)
    clean, _ = synthetic_case(rng, noise=0.05)
    noisy = rng.normal(0, 1.0, SHAPE).astype(np.float32)  # no structure at all: the model cannot be sure
    clean_id = store.add_image(Volume(clean * 100.0, np.eye(4)), "clean", "test").id
    noisy_id = store.add_image(Volume(noisy * 100.0, np.eye(4)), "noisy", "test").id
    train(store, "seg", tiny_train_config(epochs=6), device="cpu")
    predictor = Predictor.load(store, "seg", device="cpu")
    return {"store": store, "train": train_ids, "pool": pool_ids, "clean": clean_id, "noisy": noisy_id,
            "predictor": predictor}


def test_registry() -> None:
    assert strategy_names() == ["random", "sequential", "entropy", "soft-dice", "mc-dropout", "tta", "typiclust"]
    with pytest.raises(ValueError, match=r"unknown active-learning strategy 'bald'.*random, sequential, entropy"):
        get_strategy("bald")
    with pytest.raises(ValueError, match="unknown parameter"):
        get_strategy("entropy", passes=3)
    with pytest.raises(ValueError, match="passes must be an integer >= 2"):
        get_strategy("mc-dropout", passes=1)
    with pytest.raises(ValueError, match="metric must be one of"):
        get_strategy("tta", metric="mi")
    assert get_strategy("MC-Dropout", passes=3).params["passes"] == 3


def test_pool_random_sequential(trained: dict[str, Any]) -> None:
    store = trained["store"]
    pool = trained["pool"] + [trained["clean"], trained["noisy"]]
    seq = rank_pool(store, "sequential", cache=False)
    assert seq.ids() == pool  # import order; final-labelled images are not in the pool
    assert [i.rank for i in seq.items] == list(range(1, len(pool) + 1))
    r1 = rank_pool(store, get_strategy("random", seed=1), cache=False)
    r1b = rank_pool(store, get_strategy("random", seed=1), cache=False)
    r2 = rank_pool(store, get_strategy("random", seed=2), cache=False)
    assert r1.ids() == r1b.ids() and sorted(r1.ids()) == sorted(pool)
    assert r1.ids() != r2.ids()
    assert [i.score for i in r1.items] == sorted((i.score for i in r1.items), reverse=True)
    assert rank_pool(store, "sequential", limit=2, cache=False).ids() == pool[:2]
    with pytest.raises(ValueError, match="needs a trained model"):
        rank_pool(store, "entropy")


def test_entropy_certain_image_ranks_last_and_is_cached(trained: dict[str, Any]) -> None:
    store, pred = trained["store"], trained["predictor"]
    pool = [trained["clean"], trained["noisy"]]
    ranking = rank_pool(store, "entropy", predictor=pred, pool=pool)
    assert ranking.ids() == [trained["noisy"], trained["clean"]]
    assert ranking.scored == 2 and ranking.version == 1
    assert all(0.0 <= i.score <= 1.0 for i in ranking.items)
    again = rank_pool(store, "entropy", predictor=pred, pool=pool)
    assert again.scored == 0 and all(i.cached for i in again.items)
    assert again.scores() == pytest.approx(ranking.scores())
    # the default averages per class over the class's dilated structure: higher than the background-dominated
    # whole-volume mean (the boundary is where doubt is); each region is a different cache entry
    assert ranking.params["region"] == "class"
    vol = rank_pool(store, get_strategy("entropy", region="volume"), predictor=pred, pool=[trained["clean"]])
    fg = rank_pool(store, get_strategy("entropy", foreground_only=True), predictor=pred, pool=[trained["clean"]])
    assert vol.scored == 1 and fg.scored == 1
    assert fg.items[0].score > vol.items[0].score and ranking.scores()[trained["clean"]] > vol.items[0].score
    with pytest.raises(ValueError, match="region must be one of"):
        get_strategy("entropy", region="organ")
    # a new model version: recomputed
    v1 = store.get_model("seg").version(1)
    staged = store.staging_dir() / "copy.pt"
    shutil.copy(v1.checkpoint, staged)
    store.add_model_version("seg", staged, config=v1.config, trained_on=v1.trained_on, metrics={}, make_current=False)
    pred2 = Predictor.load(store, "seg", version=2, device="cpu")
    third = rank_pool(store, "entropy", predictor=pred2, pool=pool)
    assert third.scored == 2 and third.version == 2
    assert third.scores() == pytest.approx(ranking.scores(), abs=1e-5)  # same weights, same scores
    cache = ScoreCache(store.root)
    assert cache.prune("seg", keep_version=2) == 4  # v1: 2 default-entropy rows, 1 volume, 1 foreground
    cache.close()


@pytest.mark.parametrize(("name", "params"), [("mc-dropout", {"passes": 3}), ("mc-dropout", {"passes": 3, "metric": "variance"}),
                                              ("mc-dropout", {"passes": 3, "metric": "dice"}),
                                              ("mc-dropout", {"passes": 3, "region": "class"}),
                                              ("tta", {"passes": 3}), ("tta", {"passes": 3, "metric": "variance"}),
                                              ("tta", {"passes": 3, "metric": "dice"}), ("soft-dice", {})])
def test_stochastic_strategies(trained: dict[str, Any], name: str, params: dict[str, Any]) -> None:
    store, pred = trained["store"], trained["predictor"]
    pool = [trained["clean"], trained["noisy"]]
    a = rank_pool(store, get_strategy(name, **params), predictor=pred, pool=pool, cache=False)
    b = rank_pool(store, get_strategy(name, **params), predictor=pred, pool=pool, cache=False)
    assert a.scores() == pytest.approx(b.scores())  # seeded: reproducible
    assert all(np.isfinite(s) and s >= 0 for s in a.scores().values())
    assert a.ids()[0] == trained["noisy"]
    assert not any(m.training for m in pred.net.modules())  # network left in eval mode


def test_diversity_avoids_duplicates(trained: dict[str, Any]) -> None:
    store, pred = trained["store"], trained["predictor"]
    noisy = store.load_image(trained["noisy"])
    dup = store.add_image(noisy, "noisy-copy", "test").id
    try:
        pool = [trained["noisy"], dup, *trained["pool"]]
        plain = rank_pool(store, "entropy", predictor=pred, pool=pool, limit=2)
        assert set(plain.ids()) == {trained["noisy"], dup}  # identical images, identical top scores
        diverse = rank_pool(store, "entropy", predictor=pred, pool=pool, limit=2, diversity=0.5)
        assert trained["noisy"] in diverse.ids() and dup not in diverse.ids()
        assert len(rank_pool(store, "entropy", predictor=pred, pool=pool, diversity=0.5).items) == len(pool)
    finally:
        store.delete_image(dup)


def test_typiclust_orders_the_pool_as_a_whole_over_the_networks_features(trained: dict[str, Any]) -> None:
    from segloop.activelearning.strategies import ScoringContext
    from segloop.loop.diagnostic import scorer

    store, pred = trained["store"], trained["predictor"]
    ctx = ScoringContext(load=store.load_image, predictor=pred)
    feats = ctx.features(trained["clean"])
    # the bottleneck's per-channel mean and standard deviation: twice the channels of the coarsest level's maps
    assert feats.ndim == 1 and feats.size % 2 == 0 and np.isfinite(feats).all()
    assert (feats[feats.size // 2 :] >= 0).all() and feats[feats.size // 2 :].max() > 0
    plain = ScoringContext(load=store.load_image, predictor=pred).automatic(trained["clean"])
    np.testing.assert_allclose(ctx.automatic(trained["clean"]), plain, atol=1e-6)  # the pass `automatic` makes

    pool = [trained["clean"], trained["noisy"], *trained["pool"]]
    progress: list[tuple[int, int]] = []
    a = rank_pool(store, get_strategy("typiclust"), predictor=pred, pool=pool, limit=2,
                  progress=lambda done, total: progress.append((done, total)))
    b = rank_pool(store, get_strategy("typiclust"), predictor=pred, pool=pool, limit=2)
    assert a.ids() == b.ids() and len(a.ids()) == 2 and set(a.ids()) <= set(pool)
    labelled = [r.id for r in store.list_images() if r.label_state == "final"]
    assert progress[-1] == (len(pool) + len(labelled),) * 2  # the labelled images are described too
    whole = rank_pool(store, get_strategy("typiclust", batch=2), predictor=pred, pool=pool)
    assert sorted(whole.ids()) == sorted(pool) and whole.ids()[:2] == a.ids()
    with pytest.raises(ValueError, match="needs a trained model"):
        rank_pool(store, "typiclust", pool=pool)
    with pytest.raises(ValueError, match="ranks the pool as a whole"):
        get_strategy("typiclust").score(trained["clean"], ctx)
    with pytest.raises(ValueError, match="no per-image score"):
        scorer("typiclust")

    # then=entropy: the description is the features followed by the entropy score of the same pass
    hybrid = get_strategy("typiclust", min_cluster=5, then="entropy")
    assert hybrid.feature_kind == "bottleneck+entropy" and get_strategy("typiclust").feature_kind == "bottleneck"
    fresh = ScoringContext(load=store.load_image, predictor=pred)
    vec = hybrid.describe(trained["clean"], fresh)
    np.testing.assert_allclose(vec[:-1], feats, rtol=1e-5, atol=1e-6)
    assert vec[-1] == pytest.approx(get_strategy("entropy").score(trained["clean"], ctx), rel=1e-5)
    mixed = rank_pool(store, hybrid, predictor=pred, pool=pool, limit=3)
    assert len(mixed.ids()) == 3 and set(mixed.ids()) <= set(pool)
    assert set(hybrid.reasons) == set(mixed.ids()) and set(hybrid.reasons.values()) <= {"typical", "uncertain"}
    with pytest.raises(ValueError, match="then must be one of"):
        get_strategy("typiclust", then="margin")


def test_scoring_does_not_block_saving_and_can_be_cancelled(trained: dict[str, Any]) -> None:
    store, pred = trained["store"], trained["predictor"]
    target = trained["pool"][0]
    saved: list[int] = []

    def save_during_scoring(done: int, total: int) -> None:
        if not saved:  # another annotator saves while the pool is being scored
            _, label = synthetic_case(np.random.default_rng(0))
            saved.append(store.save_label(target, label, author="someone", status="draft").revision)

    ranking = rank_pool(store, "entropy", predictor=pred, batch_size=1, progress=save_during_scoring, cache=False)
    assert saved and target in ranking.ids()  # a draft is still in the pool
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RankingCancelled):
        rank_pool(store, "entropy", predictor=pred, cancel=cancel, cache=False)


def test_the_diagnostic_takes_one_pass_per_image_for_its_deterministic_scores(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """entropy, entropy-volume, soft-dice and the model's error share one click-free pass (the
    emulation's cost estimate counts one); each used to run its own."""
    from segloop.activelearning import passes
    from segloop.loop.diagnostic import model_error, score_error_correlation

    store, predictor = trained["store"], trained["predictor"]
    pool = trained["pool"]
    labels = {i: synthetic_case(np.random.default_rng(n), noise=0.0)[1] for n, i in enumerate(pool)}
    calls: list[int] = []
    real = passes.plain_pass_probabilities

    def counted(p: Any, data: np.ndarray) -> np.ndarray:
        calls.append(1)
        return real(p, data)

    monkeypatch.setattr(passes, "plain_pass_probabilities", counted)
    out = score_error_correlation(predictor, pool, store.load_image, labels.__getitem__,
                                  ["entropy", "entropy-volume", "soft-dice"])
    assert len(calls) == len(pool)
    # the error is that of the model's automatic segmentation, as predict() gives it in one pass
    # (post-processed; the diagnostic does not pay for test-time mirroring)
    monkeypatch.setattr(predictor, "mirror_axes", ())
    for image_id in pool:
        label = predictor.predict(store.load_image(image_id)).label.array
        fg = [int(v) for v in predictor.spec.foreground]
        assert out["errors"][image_id] == pytest.approx(model_error(label, labels[image_id], fg))
    # and the scores are those each strategy gives on its own
    for name in ("entropy", "soft-dice"):
        alone = rank_pool(store, name, predictor=predictor, cache=False)
        for item in alone.items:
            if item.image_id in out["scores"][name]:
                assert out["scores"][name][item.image_id] == pytest.approx(item.score, rel=1e-6)


def test_the_error_oracle_ranks_the_pool_by_the_models_actual_error(trained: dict[str, Any]) -> None:
    """`oracle-error` (emulation only) scores each image with the error the diagnostic measures, so
    the pool comes worst-first; without references it refuses, and it is no user strategy."""
    from segloop.activelearning.strategies import STRATEGIES
    from segloop.loop.diagnostic import ORACLE, ErrorOracle, arm_strategy, score_error_correlation

    store, predictor, pool = trained["store"], trained["predictor"], trained["pool"]
    labels = {i: synthetic_case(np.random.default_rng(n), noise=0.0)[1] for n, i in enumerate(pool)}
    # spoil two references so that the model is plainly worst on them
    worst = pool[:2]
    for i in worst:
        labels[i] = np.zeros_like(labels[i])
    oracle = arm_strategy(ORACLE, seed=4, reference=labels.__getitem__)
    assert isinstance(oracle, ErrorOracle) and ORACLE not in STRATEGIES
    ranking = rank_pool(store, oracle, predictor=predictor, pool=pool, cache=False)
    errors = score_error_correlation(predictor, pool, store.load_image, labels.__getitem__, ["entropy"])["errors"]
    ranked = [item.image_id for item in ranking.items]
    assert set(ranked[:2]) == set(worst)
    for item in ranking.items:
        assert item.score == pytest.approx(errors[item.image_id])
    assert [item.score for item in ranking.items] == sorted((item.score for item in ranking.items), reverse=True)
    with pytest.raises(ValueError, match="only the emulation can run it"):
        rank_pool(store, arm_strategy(ORACLE), predictor=predictor, pool=pool, cache=False)
