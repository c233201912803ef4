"""Several emulations (typically one per seed) summarised together: mean and spread per round.

`aggregate` reads the ``report.json`` of each ``OUT`` folder written by `segloop.loop.emulate`,
checks that the runs differ only in their seed (and output folder / device), and gives, per arm
and round, the mean, sample standard deviation, minimum and maximum of the test Dice, the
labelled fraction, the virtual user's annotation Dice and the clicks; per arm, the same over the
runs' summaries (area under the Dice-vs-fraction curve, final Dice, Dice relative to ``full``,
the fraction that first reaches 95 % of ``full``, the labels needed to reach it, interpolated
between rounds; the annotation effort in minutes per volume); per strategy, the *paired*
difference of its area under the curve to ``random``'s in each run (same seed = same splits and
pre-training) with a bootstrap 95 % interval over the runs; and the score-error rank
correlations of the diagnostic, pooled over runs and rounds. Rounds are aggregated only as far
as every run got (an unfinished run limits them; ``rounds_used`` says how far).

`write_aggregate` writes ``AGG/aggregate.json``, ``AGG/aggregate.csv`` and ``AGG/curves.png``
(mean line, min-max band).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segloop.loop.emulation_files import write_atomic as _write_atomic
from segloop.loop.emulation_files import write_json as _write_json
from segloop.loop.emulation_report import area_under_curve, dice_figure, draw_full
from segloop.loop.emulation_setup import FULL, EmulationError
from segloop.loop.statistics import bootstrap_mean_ci, labels_to_target, paired_differences

# Settings that may differ between the runs being aggregated.
# ``compare``: a run may have more or fewer arms; each arm is aggregated over the runs that have it
# (an arm missing from some runs is reported as such, not aggregated).
MAY_DIFFER = {"seed", "out", "device", "compare"}
# Training settings that change how fast a run computes, not what it computes (beyond
# floating-point summation order, as with ``device``): runs may differ in them.
TRAIN_MAY_DIFFER = {"num_threads"}


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the settings that may differ (``train.num_threads`` removed, an empty ``train`` dropped)."""
    out = {k: v for k, v in cfg.items() if k not in MAY_DIFFER}
    train = {k: v for k, v in (out.pop("train", None) or {}).items() if k not in TRAIN_MAY_DIFFER}
    if train:
        out["train"] = train
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"n", "mean", "sd", "min", "max", "values"}`` of the non-None values (sd: sample, 0 for one value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "values": list(values)}
    a = np.asarray(vals)
    return {"n": len(vals), "mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(vals) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "values": list(values)}


def clicks_per_image_per_class(record: dict[str, Any], classes: int) -> float | None:
    """A round's clicks per annotated image and foreground class (None for round 0 / full)."""
    images = len(record.get("selected") or [])
    if not images or record.get("clicks") is None:
        return None
    return float(record["clicks"]) / (images * max(1, classes))


def load_reports(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``report.json`` of each folder, checked to be comparable.

    Raises:
        EmulationError: fewer than one folder, a folder without a report, runs with other
            settings than the seed, or the same seed twice.
    """
    if not folders:
        raise EmulationError("nothing to aggregate: give one or more emulation output folders")
    reports = []
    for folder in folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise EmulationError(f"{folder}: no report.json (not an emulation output folder, or nothing finished yet)")
        try:
            reports.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise EmulationError(f"{path}: not valid JSON ({exc})") from exc
    base = _comparable(reports[0]["config"])
    for folder, rep in zip(folders, reports, strict=True):
        cfg = _comparable(rep["config"])
        diff = sorted(k for k in set(base) | set(cfg) if base.get(k) != cfg.get(k))
        if diff:
            raise EmulationError(
                f"{folder}: its emulation has other settings than {folders[0]} ({', '.join(diff)} differ); "
                "only the seed and the arms compared may differ between aggregated runs"
            )
    seeds = [r["config"].get("seed") for r in reports]
    if len(set(seeds)) != len(seeds):
        raise EmulationError(f"the same seed appears twice among the runs: {seeds}")
    return reports


# Settings that do not change a strategy's arm: which other arms ran beside it (``strategy`` is
# unused when ``compare`` is given), the folder, the device, and the diagnostic, which scores the
# pool with the same model before selection and changes nothing an arm selects or trains (checked:
# the same seed's random arm gave the same Dice in every round with another --diagnose).
ARM_UNAFFECTED = {"compare", "strategy", "diagnose", "diagnose_images", "out", "device"}
# Settings that change the strategies' arms but not the ``full`` arm, which trains once on every
# pool image's reference label with the splits, budgets and training settings of the run: the
# annotator's and the selection's settings as well.
FULL_UNAFFECTED = ARM_UNAFFECTED | {"finish", "clicks", "satisfied_dice", "stroke_tolerance", "diversity"}


def borrow_arms(reports: list[dict[str, Any]], donors: Sequence[str | Path], only: str | None = None,
                flag: str = "--arms-from") -> list[str]:
    """Give each report the finished arms it lacks from the donor run with its seed (in place):
    the emulation is deterministic, so an arm run again with the same seed, splits, budgets,
    pre-training and annotator is the same arm. A donor must agree on every setting that decides
    the arm (all but `ARM_UNAFFECTED`; for ``full`` all but `FULL_UNAFFECTED`) and have the same
    splits. ``only``: borrow that arm alone (``--full-from``). Returns one line per borrowed arm.

    Raises:
        EmulationError: a donor without a report or without a finished arm to give, or one that
            differs in a setting deciding an arm it would give.
    """
    by_seed: dict[Any, tuple[str, dict[str, Any]]] = {}
    for folder in donors:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise EmulationError(f"{flag} {folder}: no report.json")
        rep = json.loads(path.read_text())
        if only is not None and not rep.get("arms", {}).get(only):
            raise EmulationError(f"{flag} {folder}: its run has no finished {only!r} arm")
        if not any(rep.get("arms", {}).values()):
            raise EmulationError(f"{flag} {folder}: its run has no finished arm")
        by_seed[rep["config"].get("seed")] = (str(folder), rep)
    notes = []
    for rep in reports:
        seed = rep["config"].get("seed")
        if seed not in by_seed:
            continue
        folder, donor = by_seed[seed]
        wanted = [only] if only is not None else list(donor.get("arms") or {})
        for arm in wanted:
            if rep["arms"].get(arm) or not donor["arms"].get(arm):
                continue
            unaffected = FULL_UNAFFECTED if arm == FULL else ARM_UNAFFECTED
            a = {k: v for k, v in _comparable(rep["config"]).items() if k not in unaffected}
            b = {k: v for k, v in _comparable(donor["config"]).items() if k not in unaffected}
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                raise EmulationError(f"{flag} {folder}: seed {seed}'s {arm!r} arm was run with other settings "
                                     f"({', '.join(diff)} differ)")
            if rep.get("splits") and donor.get("splits") and rep["splits"] != donor["splits"]:
                raise EmulationError(f"{flag} {folder}: seed {seed} has other splits there")
            rep["arms"][arm] = donor["arms"][arm]
            summary = (donor.get("summary") or {}).get(arm)
            if summary is not None:
                rep.setdefault("summary", {})[arm] = summary
            notes.append(f"seed {seed}: the {arm!r} arm comes from {folder} (same splits, budgets and settings)")
    return notes


def borrow_full(reports: list[dict[str, Any]], donors: Sequence[str | Path]) -> list[str]:
    """`borrow_arms` for the ``full`` arm alone (``--full-from``)."""
    return borrow_arms(reports, donors, only=FULL, flag="--full-from")


def aggregate(folders: Sequence[str | Path], full_from: Sequence[str | Path] = (),
              arms_from: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Mean and spread over several emulation runs (see the module docstring); ``arms_from``:
    earlier runs (one per seed) whose arms stand in for arms a run lacks (`borrow_arms`);
    ``full_from``: the same for the ``full`` arm alone (`borrow_full`)."""
    reports = load_reports(folders)
    borrowed = borrow_arms(reports, arms_from) if arms_from else []
    borrowed += borrow_full(reports, full_from) if full_from else []
    arms = [a for r in reports for a in r["config"].get("compare") or [r["config"].get("strategy")] if a]
    arms += [a for r in reports for a, rounds in (r.get("arms") or {}).items() if rounds]
    arms = list(dict.fromkeys(str(a).strip().lower() for a in arms))
    if "random" in arms:  # random first, full last: the order of the tables and the plot
        arms.insert(0, arms.pop(arms.index("random")))
    if FULL in arms:
        arms.append(arms.pop(arms.index(FULL)))
    out_arms: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for arm in arms:
        runs = [r["arms"].get(arm) or [] for r in reports]
        if not all(runs):
            summary[arm] = {"runs": sum(1 for x in runs if x), "note": "missing in some runs: not aggregated"}
            continue
        n_rounds = min(len(x) for x in runs)
        rows = []
        for k in range(n_rounds):
            recs = [x[k] for x in runs]
            rows.append({
                "round": k,
                "labelled": spread([r["labelled"] for r in recs]),
                "labelled_fraction": spread([r["labelled_fraction"] for r in recs]),
                "test_mean_dice": spread([r["test_mean_dice"] for r in recs]),
                "annotation_dice": spread([r.get("annotation_dice") for r in recs]),
                "clicks": spread([r.get("clicks") for r in recs]),
                "seconds": spread([r.get("seconds") for r in recs]),
                "minutes_per_volume": spread([r.get("minutes_per_volume") for r in recs]),
            })
        out_arms[arm] = rows
        s: dict[str, Any] = {"runs": len(runs), "rounds_used": n_rounds - 1 if arm != FULL else None,
                             "final_test_mean_dice": spread([x[n_rounds - 1]["test_mean_dice"] for x in runs])}
        if arm != FULL:
            aucs = [area_under_curve([r["labelled_fraction"] for r in x[:n_rounds]], [r["test_mean_dice"] for r in x[:n_rounds]])
                    for x in runs]
            s["auc"] = spread(aucs)
            s["final_labelled_fraction"] = spread([x[n_rounds - 1]["labelled_fraction"] for x in runs])
            s["last_annotation_dice"] = spread([x[n_rounds - 1].get("annotation_dice") for x in runs])
            s["last_clicked_dice"] = spread([x[n_rounds - 1].get("clicked_dice") for x in runs])
            s["last_clicks_per_image_per_class"] = spread([
                clicks_per_image_per_class(x[n_rounds - 1], len(rep.get("classes") or [None]))
                for x, rep in zip(runs, reports, strict=True)
            ])
            fulls = [(r["arms"].get(FULL) or [{}])[0].get("test_mean_dice") for r in reports]
            if all(f for f in fulls):
                s["relative_to_full"] = spread([x[n_rounds - 1]["test_mean_dice"] / f for x, f in zip(runs, fulls, strict=True)])
                reach = []
                for x, f in zip(runs, fulls, strict=True):
                    hit = [r["labelled_fraction"] for r in x[:n_rounds] if r["test_mean_dice"] >= 0.95 * f]
                    reach.append(hit[0] if hit else None)
                s["fraction_reaching_95pct_of_full"] = spread(reach)
                s["runs_reaching_95pct_of_full"] = sum(1 for v in reach if v is not None)
                s["labels_to_95pct_of_full"] = spread([
                    labels_to_target([r["labelled"] for r in x[:n_rounds]], [r["test_mean_dice"] for r in x[:n_rounds]], 0.95 * f)
                    for x, f in zip(runs, fulls, strict=True)])
            s["minutes_per_volume"] = spread([_mean_of(x[1:n_rounds], "minutes_per_volume") for x in runs])
            s["manual_minutes_per_volume"] = spread([_mean_of(x[1:n_rounds], "manual_minutes_per_volume") for x in runs])
            diags = [r["diagnostic"] for x in runs for r in x[1:n_rounds] if r.get("diagnostic")]
            s["score_error_spearman"] = _pooled_correlations(diags)
        clicks = [((rep.get("summary") or {}).get(arm) or {}).get("clicks") for rep in reports]
        if any(clicks):
            s["clicks"] = _click_spread([c for c in clicks if c])
        summary[arm] = s
    if "random" in out_arms:
        for arm in out_arms:
            if arm in ("random", FULL):
                continue
            # the same rounds on both sides: an arm that got less far is compared with random's curve as far
            n = min(summary[arm]["rounds_used"], summary["random"]["rounds_used"]) + 1

            def auc_upto(name: str, n: int = n) -> list[float | None]:
                return [area_under_curve([r["labelled_fraction"] for r in x[:n]], [r["test_mean_dice"] for r in x[:n]])
                        for x in (rep["arms"][name] for rep in reports)]

            if n < 2:
                summary[arm]["note"] = "no finished round in some run: no comparison with random"
                continue
            diffs = paired_differences(auc_upto(arm), auc_upto("random"))
            summary[arm]["auc_minus_random_rounds"] = n - 1
            summary[arm]["auc_minus_random"] = spread(diffs)
            summary[arm]["auc_minus_random_ci"] = bootstrap_mean_ci(diffs)
            summary[arm]["runs_auc_above_random"] = sum(1 for d in diffs if d is not None and d > 0)
    all_diags = [r["diagnostic"] for arm in out_arms if arm != FULL for x in (rep["arms"].get(arm) or [] for rep in reports)
                 for r in x[1:] if r.get("diagnostic")]
    cfg = dict(reports[0]["config"])
    for key in MAY_DIFFER:
        cfg.pop(key, None)
    return {"score_error_spearman": _pooled_correlations(all_diags), "effort_model": reports[0].get("effort_model"),
            "budgets": reports[0].get("budgets"),"runs": [str(f) for f in folders], "seeds": [r["config"].get("seed") for r in reports],
            "config": cfg, "wall_seconds": [r.get("wall_seconds") for r in reports], "summary": summary, "arms": out_arms,
            "notes": borrowed}


def _click_spread(figures: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Spread over runs of the click figures of each run's final model (`emulation_report.click_summary`)."""
    steps = [k for k in figures[0]["dice_after"] if all(k in f["dice_after"] for f in figures)]
    return {"runs": len(figures), "images": figures[0].get("images"), "max_clicks": figures[0].get("max_clicks"),
            "dice_after": {k: spread([f["dice_after"][k] for f in figures]) for k in steps},
            "noc85": spread([f.get("noc85") for f in figures]), "noc90": spread([f.get("noc90") for f in figures]),
            "prompts": {k: spread([(f.get("prompts") or {}).get(k) for f in figures])
                        for k in dict.fromkeys(k for f in figures for k in (f.get("prompts") or {}))}}


def _mean_of(records: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in records if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _pooled_correlations(diagnostics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per scorer: the Spearman correlations of every diagnostic (run x round), their mean and a
    bootstrap 95 % interval of the mean (the diagnostics are not independent across the rounds of
    one run: the interval is indicative)."""
    names = list(dict.fromkeys(n for d in diagnostics for n in (d.get("spearman") or {})))
    out: dict[str, Any] = {}
    for n in names:
        vals = [(d.get("spearman") or {}).get(n) for d in diagnostics]
        out[n] = {**spread(vals), "ci": bootstrap_mean_ci(vals)}
    return out


def write_aggregate(agg: dict[str, Any], out: str | Path) -> None:
    """``aggregate.json``, ``aggregate.csv`` (one row per arm and round), ``diagnostic.csv`` (the
    score-error rank correlations per scorer, pooled and per arm), ``clicks.csv`` (the final models'
    Dice after k clicks and NoC over the runs) and ``curves.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "aggregate.json", agg)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "round", "runs", "labelled_fraction", "test_dice_mean", "test_dice_sd", "test_dice_min",
                "test_dice_max", "annotation_dice_mean", "annotation_dice_sd", "clicks_mean"])

    def f(v: Any) -> str:
        return "" if v is None else f"{float(v):.4f}"

    for arm, rows in agg["arms"].items():
        for r in rows:
            d = r["test_mean_dice"]
            a = r["annotation_dice"]
            w.writerow([arm, r["round"], d["n"], f(r["labelled_fraction"]["mean"]), f(d["mean"]), f(d["sd"]), f(d["min"]),
                        f(d["max"]), f(a["mean"]), f(a["sd"]), "" if r["clicks"]["mean"] is None else f"{r['clicks']['mean']:.1f}"])
    _write_atomic(out / "aggregate.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "scorer", "diagnostics", "spearman_mean", "spearman_sd", "ci_low", "ci_high"])
    pooled = [("all", agg.get("score_error_spearman") or {})]
    pooled += [(arm, s.get("score_error_spearman") or {}) for arm, s in agg["summary"].items()]
    for arm, table in pooled:
        for name, d in table.items():
            w.writerow([arm, name, d["n"], f(d["mean"]), f(d["sd"]), f(d["ci"]["low"]), f(d["ci"]["high"])])
    _write_atomic(out / "diagnostic.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "runs", "images", "max_clicks", "clicks_per_class", "dice_mean", "dice_sd", "dice_min", "dice_max"])
    for arm, s in agg["summary"].items():
        c = s.get("clicks")
        if not c:
            continue
        rows = [(k, c["dice_after"][k]) for k in c["dice_after"]]
        rows += [("noc85", c["noc85"]), ("noc90", c["noc90"])]
        for k, d in rows:
            w.writerow([arm, c["runs"], c["images"], c["max_clicks"], k, f(d["mean"]), f(d["sd"]), f(d["min"]), f(d["max"])])
    _write_atomic(out / "clicks.csv", buf.getvalue().encode())
    plot_aggregate(agg, out / "curves.png")


def plot_aggregate(agg: dict[str, Any], path: Path) -> None:
    """Mean test Dice vs. labelled fraction per arm with a min-max band; ``full`` as a line and band."""
    cfg = agg["config"]
    title = (f"{Path(str(cfg.get('dataset', ''))).name}: seeds {agg['seeds']}, {cfg.get('per_round')}/round, "
             f"{cfg.get('clicks')} clicks/class")
    with dice_figure(path, title, "test mean Dice (band: min-max over seeds)") as ax:
        for arm, rows in agg["arms"].items():
            if not rows:
                continue
            if arm == FULL:
                d = rows[0]["test_mean_dice"]
                draw_full(ax, d["mean"], (d["min"], d["max"]))
                continue
            x = [r["labelled_fraction"]["mean"] for r in rows]
            y = [r["test_mean_dice"]["mean"] for r in rows]
            (line,) = ax.plot(x, y, marker="o", label=f"{arm} (mean of {rows[0]['test_mean_dice']['n']})")
            ax.fill_between(x, [r["test_mean_dice"]["min"] for r in rows], [r["test_mean_dice"]["max"] for r in rows],
                            color=line.get_color(), alpha=0.15)
