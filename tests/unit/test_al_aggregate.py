"""Aggregating several emulation runs (one per seed): mean and spread per round, refusals."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from segloop.cli.common import CommandError
from segloop.loop.aggregate import aggregate, clicks_per_image_per_class, spread, write_aggregate
from segloop.loop.emulate import EmulationError

CONFIG: dict[str, Any] = {"dataset": "/data/Task04_Hippocampus", "out": "", "strategy": "entropy",
                          "compare": ["random", "entropy", "full"], "per_round": 2, "rounds": 2, "clicks": 3, "seed": 0}


def _round(arm: str, k: int, dice: float, ann: float | None = None) -> dict[str, Any]:
    return {"arm": arm, "round": k, "labelled": 4 + 2 * k, "labelled_fraction": (4 + 2 * k) / 20, "test_mean_dice": dice,
            "annotation_dice": ann, "clicks": 0 if k == 0 else 6, "selected": [] if k == 0 else ["a", "b"], "seconds": 10.0}


def write_run(folder: Path, seed: int, random: list[float], entropy: list[float], full: float, **cfg: Any) -> Path:
    folder.mkdir(parents=True)
    report = {
        "config": {**CONFIG, "out": str(folder), "seed": seed, **cfg}, "classes": ["Anterior", "Posterior"],
        "wall_seconds": 100.0 + seed,
        "arms": {
            "random": [_round("random", k, d, None if k == 0 else 0.8) for k, d in enumerate(random)],
            "entropy": [_round("entropy", k, d, None if k == 0 else 0.9) for k, d in enumerate(entropy)],
            "full": [{**_round("full", 0, full), "labelled": 20, "labelled_fraction": 1.0}],
        },
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "s0", 0, [0.70, 0.72, 0.74], [0.70, 0.76, 0.80], 0.82),
        write_run(tmp_path / "s1", 1, [0.60, 0.66, 0.70], [0.60, 0.70, 0.78], 0.80),
        write_run(tmp_path / "s2", 2, [0.65, 0.70, 0.72], [0.65, 0.68, 0.70], 0.84),
    ]


def test_mean_and_spread_per_round(runs: list[Path]) -> None:
    agg = aggregate(runs)
    assert agg["seeds"] == [0, 1, 2] and "seed" not in agg["config"]
    ent = agg["arms"]["entropy"]
    assert [r["round"] for r in ent] == [0, 1, 2]
    last = ent[2]["test_mean_dice"]
    assert last["n"] == 3 and last["mean"] == pytest.approx(0.76) and last["min"] == 0.70 and last["max"] == 0.80
    assert last["sd"] == pytest.approx(0.052915, abs=1e-5)  # sample sd of 0.80, 0.78, 0.70
    assert ent[0]["annotation_dice"]["n"] == 0 and ent[1]["annotation_dice"]["mean"] == pytest.approx(0.9)
    s = agg["summary"]["entropy"]
    # AUC per run (trapezoid / span): seed 0: ((0.70+0.76)/2 + (0.76+0.80)/2) / 2 = 0.755
    assert s["auc"]["values"][0] == pytest.approx(0.755)
    rnd0 = ((0.70 + 0.72) / 2 + (0.72 + 0.74) / 2) / 2
    assert s["auc_minus_random"]["values"][0] == pytest.approx(0.755 - rnd0)
    assert s["runs_auc_above_random"] == 2  # seed 2: entropy below random
    # 95% of full: seed 0 needs 0.779 -> 0.80 at 8/20; seed 1 0.76 -> 0.78 at 8/20; seed 2 0.798 -> never
    assert s["fraction_reaching_95pct_of_full"]["values"] == [0.4, 0.4, None] and s["runs_reaching_95pct_of_full"] == 2
    assert s["last_clicks_per_image_per_class"]["mean"] == pytest.approx(6 / (2 * 2))
    assert agg["summary"]["full"]["final_test_mean_dice"]["mean"] == pytest.approx(0.82)


def test_unfinished_run_limits_the_rounds(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", 0, [0.7, 0.72, 0.74], [0.7, 0.75, 0.8], 0.8)
    b = write_run(tmp_path / "b", 1, [0.7, 0.71], [0.7, 0.73], 0.8)
    agg = aggregate([a, b])
    assert len(agg["arms"]["entropy"]) == 2 and agg["summary"]["entropy"]["rounds_used"] == 1


def test_refusals(tmp_path: Path, runs: list[Path]) -> None:
    other = write_run(tmp_path / "other", 3, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.8, clicks=1)
    with pytest.raises(EmulationError, match="clicks differ"):
        aggregate([runs[0], other])
    twice = write_run(tmp_path / "twice", 0, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.8)
    with pytest.raises(EmulationError, match="same seed"):
        aggregate([runs[0], twice])
    other_train = write_run(tmp_path / "lr", 4, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.8, train={"lr": 1e-3})
    with pytest.raises(EmulationError, match="train differ"):
        aggregate([runs[0], other_train])
    # the number of torch threads changes the speed, not the experiment
    threads = write_run(tmp_path / "threads", 5, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.8, train={"num_threads": 1})
    assert aggregate([runs[0], threads])["seeds"] == [0, 5]
    # another list of arms: each arm over the runs that have it
    fewer = write_run(tmp_path / "fewer", 6, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.8, compare=["random", "full"])
    del_entropy = json.loads((fewer / "report.json").read_text())
    del del_entropy["arms"]["entropy"]
    (fewer / "report.json").write_text(json.dumps(del_entropy))
    mixed = aggregate([runs[0], fewer])
    assert mixed["summary"]["random"]["runs"] == 2 and mixed["summary"]["entropy"]["runs"] == 1
    assert "missing in some runs" in mixed["summary"]["entropy"]["note"]
    with pytest.raises(EmulationError, match="no report.json"):
        aggregate([runs[0], tmp_path / "missing"])
    with pytest.raises(EmulationError, match="nothing to aggregate"):
        aggregate([])


def test_outputs_and_cli(tmp_path: Path, runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    from segloop.cli.emulate_command import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "agg"
    args = parser.parse_args(["emulate", "--aggregate", *map(str, runs), "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "seeds [0, 1, 2]" in printed and "entropy" in printed and "2/3 runs" in printed
    assert json.loads((out / "aggregate.json").read_text()) == json.loads(json.dumps(aggregate(runs)))
    rows = list(csv.DictReader((out / "aggregate.csv").open()))
    assert [(r["arm"], r["round"]) for r in rows][:3] == [("random", "0"), ("random", "1"), ("random", "2")]
    assert float(rows[5]["test_dice_mean"]) == pytest.approx(0.76, abs=1e-4)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    bad = parser.parse_args(["emulate", "--aggregate", str(tmp_path / "nothing"), "--out", str(out)])
    with pytest.raises(CommandError, match="no report.json"):
        bad.func(bad)
    write_aggregate(aggregate(runs[:1]), tmp_path / "one")  # a single run: sd 0, still a plot


def test_helpers() -> None:
    s = spread([1.0, None, 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0 and s["values"] == [1.0, None, 3.0]
    assert spread([None])["mean"] is None and spread([2.0])["sd"] == 0.0
    assert clicks_per_image_per_class({"clicks": 12, "selected": ["a", "b"]}, 2) == 3.0
    assert clicks_per_image_per_class({"clicks": 0, "selected": []}, 2) is None


def test_click_figures_over_runs(tmp_path: Path) -> None:
    folders = []
    for seed, (noc90, dice3) in enumerate([(4.0, 0.88), (6.0, 0.90), (5.0, 0.86)]):
        folder = write_run(tmp_path / f"c{seed}", seed, [0.7, 0.72, 0.74], [0.7, 0.75, 0.78], 0.8)
        report = json.loads((folder / "report.json").read_text())
        clicks = {"images": 20, "max_clicks": 20, "model_version": 3, "dice_after": {"0": 0.8, "3": dice3},
                  "noc85": 1.0, "noc90": noc90}
        report["summary"] = {"entropy": {"clicks": clicks}}
        (folder / "report.json").write_text(json.dumps(report))
        folders.append(folder)
    agg = aggregate(folders)
    c = agg["summary"]["entropy"]["clicks"]
    assert c["runs"] == 3 and c["noc90"]["mean"] == pytest.approx(5.0) and c["noc90"]["sd"] == pytest.approx(1.0)
    assert c["dice_after"]["3"]["mean"] == pytest.approx(0.88) and c["dice_after"]["3"]["min"] == 0.86
    assert "clicks" not in agg["summary"]["random"]  # runs without figures for an arm: none made up
    write_aggregate(agg, tmp_path / "agg")
    rows = list(csv.DictReader((tmp_path / "agg" / "clicks.csv").open()))
    assert [(r["arm"], r["clicks_per_class"]) for r in rows] == [("entropy", "0"), ("entropy", "3"), ("entropy", "noc85"),
                                                                 ("entropy", "noc90")]
    assert float(rows[3]["dice_mean"]) == pytest.approx(5.0)


def test_full_arm_borrowed_from_a_run_with_the_same_training(tmp_path: Path) -> None:
    donors = [write_run(tmp_path / f"d{s}", s, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], full, finish=None)
              for s, full in ((0, 0.90), (1, 0.80))]
    new = []
    for s in (0, 1):  # another annotator and another strategy list: the full arm does not depend on them
        run = write_run(tmp_path / f"n{s}", s, [0.70, 0.80, 0.85], [0.70, 0.82, 0.86], 0.0, finish="brush",
                        compare=["random", "entropy", "tta-dice", "full"])
        rep = json.loads((run / "report.json").read_text())
        del rep["arms"]["full"]
        (run / "report.json").write_text(json.dumps(rep))
        new.append(run)
    without = aggregate(new)
    assert "relative_to_full" not in without["summary"]["random"]
    agg = aggregate(new, full_from=donors)
    assert len(agg["notes"]) == 2 and "d0" in agg["notes"][0]
    rel = agg["summary"]["random"]["relative_to_full"]["values"]
    assert rel == pytest.approx([0.85 / 0.90, 0.85 / 0.80])  # each seed's own donor
    # a donor trained otherwise (other budgets) is refused, naming the setting
    other = write_run(tmp_path / "o0", 0, [0.5] * 3, [0.5] * 3, 0.9, per_round=3)
    with pytest.raises(EmulationError, match="per_round"):
        aggregate(new, full_from=[other])
    bare = write_run(tmp_path / "b0", 0, [0.5] * 3, [0.5] * 3, 0.9)
    rep = json.loads((bare / "report.json").read_text())
    del rep["arms"]["full"]
    (bare / "report.json").write_text(json.dumps(rep))
    with pytest.raises(EmulationError, match="no finished 'full' arm"):
        aggregate(new, full_from=[bare])


def test_arms_borrowed_from_earlier_runs_of_the_same_seeds(tmp_path: Path) -> None:
    donors = [write_run(tmp_path / f"d{s}", s, rnd, [0.5, 0.5, 0.5], 0.9, diagnose=["entropy"])
              for s, rnd in ((0, [0.70, 0.72, 0.74]), (1, [0.60, 0.66, 0.70]))]
    new = []
    for s in (0, 1):  # a run of a new arm alone: random and full come from the donors
        run = write_run(tmp_path / f"n{s}", s, [0.0] * 3, [0.70, 0.78, 0.80], 0.0, compare=["entropy"],
                        diagnose=["soft-dice"])
        rep = json.loads((run / "report.json").read_text())
        del rep["arms"]["random"], rep["arms"]["full"]
        (run / "report.json").write_text(json.dumps(rep))
        new.append(run)
    agg = aggregate(new, arms_from=donors)
    assert list(agg["arms"]) == ["random", "entropy", "full"]
    assert len(agg["notes"]) == 4 and all("comes from" in n for n in agg["notes"])
    assert agg["arms"]["random"][2]["test_mean_dice"]["values"] == [0.74, 0.70]  # each seed's own donor
    s = agg["summary"]["entropy"]
    # the paired difference uses the borrowed random arm of the same seed
    assert s["auc_minus_random"]["values"][0] == pytest.approx(((0.70 + 0.78) / 2 + (0.78 + 0.80) / 2) / 2
                                                               - ((0.70 + 0.72) / 2 + (0.72 + 0.74) / 2) / 2)
    # an arm the run has is not replaced
    assert agg["arms"]["entropy"][1]["test_mean_dice"]["values"] == [0.78, 0.78]
    # a donor with another annotator is refused for a strategy arm, naming the setting
    other = write_run(tmp_path / "o0", 0, [0.5] * 3, [0.5] * 3, 0.9, clicks=5)
    with pytest.raises(EmulationError, match="'random' arm was run with other settings \\(clicks differ\\)"):
        aggregate(new, arms_from=[other])


def test_an_arm_that_got_less_far_is_compared_over_the_same_rounds(tmp_path: Path) -> None:
    runs = []
    for s in (0, 1):
        run = write_run(tmp_path / f"s{s}", s, [0.60, 0.70, 0.90], [0.60, 0.72, 0.75], 0.9)
        rep = json.loads((run / "report.json").read_text())
        rep["arms"]["entropy"] = rep["arms"]["entropy"][:2]  # stopped after round 1
        (run / "report.json").write_text(json.dumps(rep))
        runs.append(run)
    agg = aggregate(runs)
    s = agg["summary"]["entropy"]
    # over rounds 0..1: entropy (0.60+0.72)/2 = 0.66 vs random (0.60+0.70)/2 = 0.65, not random's whole curve
    assert s["auc_minus_random_rounds"] == 1 and s["auc_minus_random"]["mean"] == pytest.approx(0.01)
