"""`segloop emulate` on a tiny synthetic MSD folder: outputs, resume, refusals before any work."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segloop.cli.common import CommandError
from segloop.loop.emulate import (
    EmulationConfig,
    EmulationError,
    area_under_curve,
    parse_initial,
    run_emulation,
)
from segloop.ml.prompt_eval import PROTOCOLS
from tests.unit.al_synthetic import synthetic_case

N_CASES = 14
TRAIN = {"network": {"channels": [8, 16], "num_res_units": 1, "dropout": 0.1}, "epochs": 2, "steps_per_epoch": 2,
         "batch_size": 2, "patch_size": [16, 24, 16], "lr": 1e-2, "max_click_iters": 1, "num_threads": 1}


def make_msd(root: Path, n: int = N_CASES) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(n):
        image, label = synthetic_case(rng)
        nib.save(nib.Nifti1Image(image * 50, affine), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "Tiny", "modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    return root


def config(ds: Path, out: Path, **kw: Any) -> EmulationConfig:
    base: dict[str, Any] = dict(dataset=str(ds), out=str(out), strategy="entropy", compare=["random", "entropy", "full"],
                                initial="5", per_round=2, rounds=2, clicks=2, seed=0, minutes_per_round=None,
                                pretrain_minutes=None, full_minutes=None, steps_per_image=None, train=TRAIN,
                                diagnose=["entropy", "soft-dice"], diagnose_images=4, device="cpu", noc_images=3, noc_clicks=3)
    base.update(kw)
    return EmulationConfig(**base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("emu")
    ds = make_msd(root / "ds")
    out = root / "out"
    lines: list[str] = []
    report = run_emulation(config(ds, out), log=lines.append)
    # the log says what the training derived from the data, post-processing included
    model_line = next(line for line in lines if line.startswith("model: grid"))
    assert "patch" in model_line and "keep only the largest piece of: foreground, Anterior, Posterior" in model_line
    return ds, out, report


def test_outputs_exist_and_agree(finished: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, report = finished
    for name in ("rounds.csv", "report.json", "curves.png", "config.json", "splits.json", "sessions.json"):
        assert (out / name).is_file()
    # load conditions are recorded: per invocation and per round
    sessions = json.loads((out / "sessions.json").read_text())
    assert len(sessions) == 1 and sessions[0]["machine"]["cpus"] >= 1 and sessions[0]["wall_seconds"] > 0
    assert report["wall_seconds"] == pytest.approx(sessions[0]["wall_seconds"], abs=60)
    for rounds in report["arms"].values():
        for r in rounds:
            assert r["cpu"]["own_cores"] >= 0 and r["steps"] >= 1
    assert report["summary"]["entropy"]["last_clicks_per_image_per_class"] <= 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["test"]) == 3 and len(splits["pool"]) == 11 and len(splits["initial"]) == 5
    assert not set(splits["test"]) & set(splits["pool"])
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert [(r["arm"], r["round"]) for r in rows] == [("random", "0"), ("random", "1"), ("random", "2"),
                                                      ("entropy", "0"), ("entropy", "1"), ("entropy", "2"), ("full", "0")]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for arm in ("random", "entropy"):
        rounds = report["arms"][arm]
        assert [r["labelled"] for r in rounds] == [5, 7, 9]
        assert rounds[0]["test_mean_dice"] == report["arms"]["random"][0]["test_mean_dice"]  # shared pre-training
        picked = [i for r in rounds[1:] for i in r["selected"]]
        assert len(set(picked)) == 4 and not set(picked) & set(splits["initial"]) and set(picked) <= set(splits["pool"])
        for r in rounds[1:]:
            assert 0 <= r["clicks"] <= 2 * 2 * 2  # images x classes x budget
            # finish=brush (default): what the clicks left wrong is brushed, so the saved label is the reference
            assert r["annotation_dice"] == pytest.approx(1.0) and set(r["annotation_dice_per_class"]) == {"Anterior", "Posterior"}
            assert 0.0 <= r["clicked_dice"] <= 1.0 and set(r["clicked_dice_per_class"]) == {"Anterior", "Posterior"}
            assert r["strokes"] >= 0 and (r["clicked_dice"] < 1.0) == (r["strokes"] > 0)
            assert set(r["test_dice"]) == {"Anterior", "Posterior"}
        assert rounds[-1]["clicks_total"] == sum(r["clicks"] for r in rounds)
        csv_dice = [float(r["test_mean_dice"]) for r in rows if r["arm"] == arm]
        assert csv_dice == pytest.approx([r["test_mean_dice"] for r in rounds], abs=1e-4)
        assert report["summary"][arm]["auc"] is not None
    assert report["arms"]["full"][0]["labelled_fraction"] == 1.0
    # the correlation diagnostic: every scorer on the same pool images with the same model, each round
    diag_rows = list(csv.DictReader((out / "diagnostic.csv").open()))
    assert {(r["arm"], r["round"], r["scorer"]) for r in diag_rows} == {
        (a, str(k), n) for a in ("random", "entropy") for k in (1, 2) for n in ("entropy", "soft-dice")}
    for arm in ("random", "entropy"):
        for k in (1, 2):
            saved = json.loads((out / "arms" / arm / f"diagnostic-{k:02d}.json").read_text())
            assert saved["images"] == 4 and set(saved["scores"]) == {"entropy", "soft-dice"}
            assert all(0.0 <= e <= 1.0 for e in saved["errors"].values())
        s = report["summary"][arm]
        # annotation effort: clicks, strokes and reviewed slices cost minutes; each annotation's figure is the model's sum
        assert s["minutes_per_volume"] > 0 and s["manual_minutes_per_volume"] > 0
        for k in (1, 2):
            sel = json.loads((out / "arms" / arm / f"round-{k:02d}.json").read_text())
            for a in sel["annotations"].values():
                e = a["effort"]
                assert e["strokes"] == a["strokes"] and e["clicks"] == a["clicks"]
                assert e["minutes"] == pytest.approx((2.4 * e["clicks"] + 5.0 * e["strokes"] + 1.5 * e["reviewed_slices"]) / 60)
        assert report["arms"][arm][-1]["annotation_minutes_total"] == pytest.approx(
            sum(r.get("annotation_minutes") or 0 for r in report["arms"][arm]))
        assert "labels_to_95pct_of_full" in s and set(s["score_error_spearman"]) == {"entropy", "soft-dice"}
    assert report["effort_model"]["click_seconds"] > 0 and report["budgets"]["pretrain"]["steps"] is None
    # the click figures of every arm's final model: Dice after k = 0..3 clicks per class, NoC capped at 3
    click_rows = {r["arm"]: r for r in csv.DictReader((out / "clicks.csv").open())}
    assert set(click_rows) == {"random", "entropy", "full"}
    for arm in ("random", "entropy", "full"):
        c = report["summary"][arm]["clicks"]
        saved = json.loads((out / "arms" / arm / "clicks.json").read_text())
        assert c["images"] == saved["images"] == 3 and c["max_clicks"] == 3
        assert c["model_version"] == report["arms"][arm][-1]["model_version"]
        assert list(c["dice_after"]) == ["0", "1", "2", "3"] and "5" not in c["dice_after"]
        assert c["dice_after"]["0"] == pytest.approx(saved["dice_after"]["0"]["mean"])
        assert 0.0 <= c["noc85"] <= 3 and 0.0 <= c["noc90"] <= 3 and c["noc85"] <= c["noc90"]
        assert float(click_rows[arm]["noc90"]) == pytest.approx(c["noc90"], abs=0.01)
        # Dice per prompt type on the same images; "auto" is the automatic prediction again
        assert set(c["prompts"]) == set(PROTOCOLS) and saved["prompts"]["images"] == 3
        assert c["prompts"]["auto"] == pytest.approx(c["dice_after"]["0"], abs=1e-9)
        assert c["prompts"]["clicks-3"] == pytest.approx(c["dice_after"]["3"], abs=1e-9)
    prompt_rows = list(csv.DictReader((out / "prompts.csv").open()))
    assert len(prompt_rows) == 3 * len(PROTOCOLS) and {r["protocol"] for r in prompt_rows} == set(PROTOCOLS)
    # the automatic prediction of the final model is what the test split measured
    assert report["summary"]["full"]["clicks"]["dice_after"]["0"] == pytest.approx(
        report["arms"]["full"][0]["test_mean_dice"], abs=1e-6)
    # the virtual user's labels are saved, not the references
    store_labels = out / "arms" / "entropy" / "data" / "labels"
    assert any(store_labels.iterdir())


def test_resume_skips_finished_rounds(finished: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    import segloop.ml.training as training

    ds, out, report = finished
    calls: list[Any] = []
    real = training.train

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(kw.get("fine_tune"))
        return real(*a, **kw)

    monkeypatch.setattr(training, "train", counting)
    again = run_emulation(config(ds, out))  # everything finished: nothing is redone
    assert calls == [] and again["arms"] == report["arms"]
    # pretend the entropy arm was interrupted during round 2 (after its annotations were saved)
    rounds_file = out / "arms" / "entropy" / "rounds.json"
    rounds = json.loads(rounds_file.read_text())
    rounds_file.write_text(json.dumps(rounds[:2]))
    resumed = run_emulation(config(ds, out))
    assert len(calls) == 1  # only round 2's training
    new = resumed["arms"]["entropy"]
    assert new[:2] == rounds[:2] and new[2]["selected"] == rounds[2]["selected"]
    assert new[2]["clicks"] == rounds[2]["clicks"]
    with pytest.raises(EmulationError, match="other settings.*clicks"):
        run_emulation(config(ds, out, clicks=3))
    # the click figures are not pinned: other figures are measured on a finished run, no training
    more = run_emulation(config(ds, out, noc_clicks=2, noc_images=2))
    assert len(calls) == 1 and more["summary"]["full"]["clicks"]["max_clicks"] == 2
    assert more["summary"]["entropy"]["clicks"]["images"] == 2 and more["arms"] == resumed["arms"]


def test_bad_inputs_refused_before_any_work(tmp_path: Path) -> None:
    ds = make_msd(tmp_path / "ds", n=8)
    out = tmp_path / "out"
    with pytest.raises(EmulationError, match=r"unknown active-learning strategy 'bald'"):
        run_emulation(config(ds, out, compare=["random", "bald"]))
    with pytest.raises(EmulationError, match="too few to train"):
        run_emulation(config(ds, out, initial="1"))
    with pytest.raises(EmulationError, match="needs"):
        run_emulation(config(ds, out, initial="4", rounds=5))
    with pytest.raises(EmulationError, match="bad training config"):
        run_emulation(config(ds, out, train={"epochs": 0}))
    lab = ds / "labelsTr" / "case_003.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 24, 15), np.uint8), np.eye(4)), lab)
    with pytest.raises(EmulationError, match=r"case_003.*does not match"):
        run_emulation(config(ds, out))
    lab.unlink()
    with pytest.raises(EmulationError, match=r"no label for 1 image\(s\): case_003"):
        run_emulation(config(ds, out))
    assert not out.exists()  # nothing was started


def test_cli_reports_errors_as_one_line(tmp_path: Path) -> None:
    from segloop.cli.emulate_command import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["emulate", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                              "--strategy", "entropy", "--from-scratch"])
    assert args.fine_tune is False and args.per_round is None  # not given: the preset's default applies
    with pytest.raises(CommandError, match="dataset folder does not exist"):
        args.func(args)
    args = parser.parse_args(["emulate", "--out", str(tmp_path / "o")])
    with pytest.raises(CommandError, match="--dataset DIR is required"):
        args.func(args)


def test_defaults_are_the_small_start_preset(tmp_path: Path) -> None:
    """The defaults start from 2 labelled images and add small batches up to >= 30 % of the pool, with
    step budgets proportional to the images trained on (a floor for the small sets); the CLI help quotes them."""
    import segloop.loop.emulate as emu
    from segloop.cli.emulate_command import register

    cfg = EmulationConfig(dataset="d", out="o")
    assert (cfg.initial, cfg.per_round, cfg.pool_size, cfg.validation) == ("2", None, emu.PRESET_POOL_SIZE, 0)
    assert cfg.rounds is None and cfg.minutes_per_round is None
    ds = make_msd(tmp_path / "ds", n=30)
    p = emu.plan(EmulationConfig(dataset=str(ds), out="o", pool_size=20))
    assert (len(p.test), len(p.pool), len(p.initial), len(p.validation)) == (6, 20, 2, 0)
    assert p.labelled(p.rounds) / len(p.pool) >= cfg.target_fraction > p.labelled(p.rounds - 1) / len(p.pool)
    # images per round from the pool: a small pool still gets >= 3 rounds; 60 images keep 4 (Task04's runs)
    assert p.config.per_round == 1 and p.rounds == 4  # (0.3 x 20 - 2) / 3 -> 1: 2 -> 6 labelled
    assert emu.derive_per_round(60, 2, 0.3) == emu.PRESET_PER_ROUND == 4
    assert emu.derive_per_round(16, 2, 0.3) == 1 and emu.derive_per_round(40, 2, 0.3) == 3
    assert emu.derive_per_round(16, 2, 0.3, rounds=2) == 4 and emu.derive_per_round(3, 2, 0.3) == 1
    assert emu.plan(EmulationConfig(dataset=str(ds), out="o", pool_size=20, per_round=3)).config.per_round == 3
    b = p.budgets()
    floor = cfg.min_steps
    assert b["pretrain"]["steps"] == emu.PRESET_PRETRAIN_FACTOR * floor
    steps = [r["steps"] for r in b["rounds"]]
    assert steps == [max(floor, cfg.steps_per_image * p.labelled(r)) for r in range(1, p.rounds + 1)]
    assert b["full"]["steps"] == b["pretrain"]["steps"] + sum(steps)  # the same training as an arm
    assert "pre-training 300 steps" in emu.describe_budgets(b)
    # validation images are extra labelled images, held out of training
    v = emu.plan(EmulationConfig(dataset=str(ds), out="o", pool_size=20, validation=2))
    assert len(v.initial) == 2 and len(v.validation) == 2 and not set(v.initial) & set(v.validation)
    assert v.labelled(0) == 4 and v.budget("round", 1)[1] == max(floor, cfg.steps_per_image * 6)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["emulate"]
    helps = {a.dest: a.help or "" for a in sub._actions}
    assert f"at most {emu.PRESET_PER_ROUND}" in helps["per_round"] and f"default {cfg.pool_size};" in helps["pool_size"]
    assert f"default {cfg.steps_per_image};" in helps["steps_per_image"] and f"default {cfg.min_steps})" in helps["min_steps"]


def test_helpers() -> None:
    assert parse_initial("10%", 208) == 21 and parse_initial("0.1", 50) == 5 and parse_initial("12", 99) == 12
    with pytest.raises(EmulationError):
        parse_initial("ten", 10)
    assert area_under_curve([0.1, 0.2, 0.3], [0.5, 0.7, 0.7]) == pytest.approx(0.65)


def test_step_budgets(tmp_path: Path) -> None:
    """Steps replace a phase's minutes (a busy machine trains the same); unset, they do not change the pinned settings."""
    from segloop.loop.emulate import STEP_KEYS, build_train_config

    cfg = EmulationConfig(dataset="d", out="o", train={"epochs": 7})
    assert not set(STEP_KEYS) & set(cfg.pinned())  # runs pinned before step budgets existed still resume
    timed = build_train_config(cfg, 2.0, 0)
    assert timed.max_minutes == 2.0 and timed.epochs == 7
    fixed = build_train_config(cfg, 2.0, 0, steps=30)
    assert fixed.max_minutes is None and fixed.epochs * fixed.steps_per_epoch == 30
    ds = make_msd(tmp_path / "ds", n=10)
    with pytest.raises(EmulationError, match="--steps-per-round must be an integer >= 1"):
        run_emulation(config(ds, tmp_path / "bad", steps_per_round=0))
    report = run_emulation(config(ds, tmp_path / "out", compare=["random"], initial="4", rounds=1, pretrain_steps=3,
                                  steps_per_round=2, minutes_per_round=5.0))
    rounds = report["arms"]["random"]
    assert [r["steps"] for r in rounds] == [3, 2]
    assert report["config"]["steps_per_round"] == 2


def test_cost_estimate_counts_the_work(tmp_path: Path) -> None:
    import dataclasses

    from segloop.loop.emulate import plan
    from segloop.loop.emulation_cost import UnitCosts, advice, automatic_passes, estimate, strategy_passes
    from segloop.ml.prompt_eval import PROTOCOLS

    ds = make_msd(tmp_path / "ds")
    p = plan(config(ds, tmp_path / "out", compare=["random", "mc-dropout", "typiclust", "full"], pretrain_steps=10, steps_per_round=5,
                    full_steps=20, diagnose=["entropy", "mc-dropout-dice"], diagnose_images=4, noc_images=2, noc_clicks=3))
    costs = UnitCosts(step_seconds=1.0, inference_seconds=2.0, click_seconds=0.5, patch_size=(16, 24, 16),
                      volume_shape=(20, 20, 20), spacing=(1.0, 1.0, 1.0))
    est = estimate(p, costs)
    ph = est["phases"]
    # an automatic result is mirrored along the axis training flips: two passes (4 s)
    assert automatic_passes(p.config) == 2
    auto = 2 * 2.0
    assert ph["pretrain"] == {"training": 10.0, "evaluation": 3 * auto}  # 3 test images
    # click figures: a pass + 3 click rounds for 2 classes; prompt figures: each protocol a pass
    # + up to 3 click rounds per class; on 2 images
    n_protocols = len(PROTOCOLS)
    assert ph["full"]["training"] == 20.0
    assert ph["full"]["click figures"] == 2 * ((auto + 3 * 2 * 0.5) + n_protocols * (auto + 3 * 2 * 0.5))
    assert ph["random"]["training"] == 2 * 5.0 and ph["random"]["selection"] == 0.0
    # mc-dropout ranks the unlabelled pool (11 - 5 = 6, then 4) with 8 passes each
    assert strategy_passes("mc-dropout") == 8 and ph["mc-dropout"]["selection"] == (6 + 4) * 8 * 2.0
    # typiclust describes the labelled images too, with each round's model: the whole pool of 11 a round
    assert ph["typiclust"]["selection"] == 2 * 11 * 2.0
    # the diagnostic: one shared automatic pass + mc-dropout-dice's 4, on 4 images, each round
    assert ph["random"]["diagnostic"] == 2 * 4 * (1 + 4) * 2.0
    # annotation: 2 images a round, one automatic pass + up to 2 clicks for each of 2 classes
    assert ph["random"]["annotation"] == 2 * 2 * (auto + 2 * 2 * 0.5)
    # without flips in training, one pass
    assert automatic_passes(dataclasses.replace(p.config, train={**p.config.train, "flip_axes": []})) == 1
    assert est["total_seconds"] == pytest.approx(sum(sum(v.values()) for v in ph.values()))
    assert "--pool-size" in advice(est, 0.1) or "strategy" in advice(est, 0.1)


def test_a_run_over_its_time_limit_is_refused_before_any_work(tmp_path: Path) -> None:
    ds = make_msd(tmp_path / "ds")
    out = tmp_path / "out"
    with pytest.raises(EmulationError, match=r"(?s)estimate .* exceeds 0.001 min; what would shorten it:.*nothing was started"):
        run_emulation(config(ds, out, max_minutes=0.001))
    assert not (out / "config.json").exists() and not (out / "pretrain").exists()


def test_open_measurements_are_fitted_to_the_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagnostic and the click figures take a bounded share of the run: on cheap volumes all 20
    images; on costly ones the multi-pass scorers go first, then images, then the diagnostic itself;
    settings given explicitly are kept."""
    from segloop.loop.emulate import plan
    from segloop.loop.emulation_cost import DEFAULT_MEASURE_IMAGES, UnitCosts, estimate, fit_measurements

    ds = make_msd(tmp_path / "ds", n=40)
    kw: dict[str, Any] = dict(compare=["random", "entropy", "full"], pretrain_steps=300, steps_per_round=150, full_steps=900,
                              diagnose=["entropy", "soft-dice", "mc-dropout-dice"], diagnose_images=None, noc_images=None,
                              noc_clicks=20, rounds=3)
    p = plan(config(ds, tmp_path / "o", **kw))

    def costs(infer: float) -> UnitCosts:
        return UnitCosts(1.0, infer, infer / 10, (16, 16, 16), (20, 20, 20), (1.0, 1.0, 1.0))

    cheap = fit_measurements(p, costs(0.01))
    assert cheap.diagnose_images == DEFAULT_MEASURE_IMAGES and cheap.diagnose == ("entropy", "soft-dice", "mc-dropout-dice")
    assert cheap.noc_images == len(p.test) and not cheap.notes
    mid = fit_measurements(p, costs(1.5))
    assert mid.diagnose == ("entropy", "soft-dice") and 5 <= mid.diagnose_images <= DEFAULT_MEASURE_IMAGES
    assert any("multi-pass" in n for n in mid.notes)
    share = estimate(p, costs(1.5), mid)["by_kind"]
    core = sum(share.get(k, 0.0) for k in ("training", "evaluation", "selection", "annotation"))
    # the click figures 10 % and the prompt figures (on some of the same images) 5 %
    assert share["diagnostic"] <= 0.25 * core + 1e-6 and share["click figures"] <= 0.15 * core + 1e-6
    assert cheap.prompts == cheap.noc_images and mid.prompts <= mid.noc_images
    costly = fit_measurements(p, costs(60.0))
    assert costly.diagnose_images <= mid.diagnose_images and costly.noc_images < len(p.test)
    assert costly.prompts < costly.noc_images or costly.noc_images == 0  # prompts cost 10 passes an image: fewer
    import segloop.loop.emulation_cost as cost

    monkeypatch.setattr(cost, "DIAGNOSTIC_SHARE", 0.01)  # a diagnostic that cannot fit 5 images: none
    off = fit_measurements(p, costs(60.0))
    assert off.diagnose_images == 0 and any("diagnostic off" in n for n in off.notes)
    fixed = fit_measurements(plan(config(ds, tmp_path / "o", **{**kw, "diagnose_images": 7, "noc_images": 2})), costs(60.0))
    assert (fixed.diagnose_images, fixed.noc_images, len(fixed.diagnose)) == (7, 2, 3)
    assert fixed.prompts == 2  # --noc-images given: the prompt figures on those images too, however costly


def test_arms_take_strategy_defaults_or_named_variants() -> None:
    from segloop.loop.diagnostic import arm_strategy

    assert arm_strategy("tta").params["metric"] == "disagreement"  # a strategy name keeps its own defaults
    v = arm_strategy("tta-dice", seed=3)  # a named variant of the diagnostic
    assert v.name == "tta" and v.params["metric"] == "dice" and v.params["seed"] == 3
    assert arm_strategy("random", seed=5).params["seed"] == 5 and arm_strategy("entropy", seed=5).params.get("seed") is None
    with pytest.raises(ValueError, match="unknown active-learning strategy 'bald'.*variants: .*tta-dice"):
        arm_strategy("bald")


def test_a_typiclust_arm_selects_unlabelled_pool_images(finished: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    ds, _, _ = finished
    report = run_emulation(config(ds, tmp_path / "typ", strategy="typiclust", compare=["typiclust"], rounds=1,
                                  diagnose=["entropy"], noc_images=1, noc_clicks=1))
    rounds = report["arms"]["typiclust"]
    splits = json.loads((tmp_path / "typ" / "splits.json").read_text())
    picked = rounds[1]["selected"]
    assert len(picked) == 2 and len(set(picked)) == 2
    assert set(picked) <= set(splits["pool"]) and not set(picked) & set(splits["initial"])
    assert rounds[1]["labelled"] == 7 and 0.0 <= rounds[1]["test_mean_dice"] <= 1.0


def test_the_error_oracle_arm_picks_the_images_the_model_gets_most_wrong(
    finished: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """``oracle-error`` ranks by the round's model's actual error against the references: its picks
    are the worst of the pool by the same round's diagnostic, which measures that error on every
    pool image with the same model."""
    from segloop.loop.diagnostic import ORACLE, arm_strategy

    assert ORACLE in str(pytest.raises(ValueError, arm_strategy, "bald").value)  # listed among the arms
    ds, _, _ = finished
    out = tmp_path / "oracle"
    report = run_emulation(config(ds, out, strategy=ORACLE, compare=[ORACLE], rounds=1, diagnose=["entropy"],
                                  diagnose_images=50, noc_images=0))
    picked = report["arms"][ORACLE][1]["selected"]
    errors = json.loads((out / "arms" / ORACLE / "diagnostic-01.json").read_text())["errors"]
    splits = json.loads((out / "splits.json").read_text())
    assert len(picked) == 2 and set(errors) == set(splits["pool"]) - set(splits["initial"])
    assert min(errors[i] for i in picked) >= max(e for i, e in errors.items() if i not in picked)
