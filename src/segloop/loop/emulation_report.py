"""What an emulation reports (`segloop.loop.emulate`): the per-arm summary, ``rounds.csv``,
``diagnostic.csv``, ``report.json`` and the curve plot, rebuilt from the finished rounds after
every round.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segloop.loop.diagnostic import mean_correlations
from segloop.loop.emulation_files import write_atomic, write_json
from segloop.loop.emulation_setup import FULL, EmulationConfig, Plan
from segloop.loop.statistics import labels_to_target


def build_report(config: EmulationConfig, plan: Plan, arms: dict[str, list[dict[str, Any]]],
                 effort_model: dict[str, Any], clicks: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of the finished rounds of every arm: per arm its summary (AUC, labels to 95 % of
    full, minutes per volume, score-error correlations, the click figures when measured)."""
    full = arms.get(FULL)
    full_dice = full[0]["test_mean_dice"] if full else None
    summary: dict[str, Any] = {}
    for arm, rounds in arms.items():
        if not rounds:
            continue
        last = rounds[-1]
        s: dict[str, Any] = {"rounds_done": len(rounds) - 1 if arm != FULL else None,
                             "final_test_mean_dice": last["test_mean_dice"],
                             "final_labelled_fraction": last["labelled_fraction"],
                             "seconds": float(sum(r["seconds"] for r in rounds))}
        if arm != FULL:
            s["auc"] = area_under_curve([r["labelled_fraction"] for r in rounds], [r["test_mean_dice"] for r in rounds])
            s["last_annotation_dice"] = last["annotation_dice"]
            s["last_clicked_dice"] = last.get("clicked_dice")  # before brushing (finish=brush), else the same
            s["clicks_total"] = last["clicks_total"]
            n_img = len(last.get("selected") or [])
            s["last_clicks_per_image_per_class"] = (
                last["clicks"] / (n_img * len(plan.class_names)) if n_img and last.get("clicks") is not None else None
            )
            if full_dice:
                s["relative_to_full"] = last["test_mean_dice"] / full_dice
                hit = [r["labelled_fraction"] for r in rounds if r["test_mean_dice"] >= 0.95 * full_dice]
                s["fraction_reaching_95pct_of_full"] = hit[0] if hit else None
                s["labels_to_95pct_of_full"] = labels_to_target(
                    [r["labelled"] for r in rounds], [r["test_mean_dice"] for r in rounds], 0.95 * full_dice)
            done = rounds[1:]
            minutes = [r["minutes_per_volume"] for r in done if r.get("minutes_per_volume") is not None]
            manual = [r["manual_minutes_per_volume"] for r in done if r.get("manual_minutes_per_volume") is not None]
            s["minutes_per_volume"] = float(np.mean(minutes)) if minutes else None
            s["manual_minutes_per_volume"] = float(np.mean(manual)) if manual else None
            s["annotation_minutes_total"] = last.get("annotation_minutes_total")
            s["score_error_spearman"] = mean_correlations([r["diagnostic"] for r in done if r.get("diagnostic")])
        if clicks and arm in clicks:
            s["clicks"] = click_summary(clicks[arm])
        summary[arm] = s
    return {"config": config.pinned(), "classes": list(plan.class_names.values()),
            "splits": {"test": len(plan.test), "pool": len(plan.pool), "initial": len(plan.initial),
                       "validation": len(plan.validation), "rounds": plan.rounds},
            "budgets": plan.budgets(), "effort_model": effort_model,
            "summary": summary, "arms": arms}


CLICK_STEPS = (1, 2, 3, 5, 10)


def click_summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The report's digest of `segloop.ml.click_eval` figures: mean Dice after 0 and `CLICK_STEPS`
    clicks per class (those within the cap), NoC@85 / NoC@90 (mean over classes and per class) and
    the share of images reaching 0.90 per class."""
    d = figures["dice_after"]
    steps = [k for k in (0, *CLICK_STEPS) if str(k) in d]
    return {"images": figures["images"], "max_clicks": figures["max_clicks"], "model_version": figures.get("model_version"),
            "dice_after": {str(k): d[str(k)]["mean"] for k in steps},
            "noc85": figures["noc"]["85"]["mean"], "noc90": figures["noc"]["90"]["mean"],
            "noc90_per_class": {k: v for k, v in figures["noc"]["90"].items() if k != "mean"},
            "reached90": figures["reached"]["90"],
            "prompts": {k: v["mean"] for k, v in ((figures.get("prompts") or {}).get("protocols") or {}).items()}}


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    """Write ``rounds.csv``, ``diagnostic.csv``, ``clicks.csv``, ``prompts.csv`` (Dice per prompt
    type of each arm's final model), ``report.json`` and ``curves.png`` from ``report``."""
    names = report["classes"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "round", "labelled", "labelled_fraction", "test_mean_dice", "test_mean_iou",
                *[f"dice_{n}" for n in names], *[f"iou_{n}" for n in names], "clicks", "clicks_total",
                "annotation_dice", "model_version", "accepted", "seconds", "train_seconds", "select_seconds", "steps",
                "own_cores", "other_cores", "minutes_per_volume", "manual_minutes_per_volume", "clicked_dice", "strokes"])
    for rounds in report["arms"].values():
        for r in rounds:
            w.writerow([r["arm"], r["round"], r["labelled"], f"{r['labelled_fraction']:.4f}", f"{r['test_mean_dice']:.4f}",
                        f"{r['test_mean_iou']:.4f}", *[f"{r['test_dice'][n]:.4f}" for n in names],
                        *[f"{r['test_iou'][n]:.4f}" for n in names], r["clicks"], r["clicks_total"],
                        "" if r["annotation_dice"] is None else f"{r['annotation_dice']:.4f}", r["model_version"],
                        int(bool(r["accepted"])), f"{r['seconds']:.1f}", fmt(r.get("train_seconds"), 1),
                        fmt(r.get("select_seconds"), 1), r.get("steps") or "", fmt((r.get("cpu") or {}).get("own_cores"), 2),
                        fmt((r.get("cpu") or {}).get("other_cores"), 2), fmt(r.get("minutes_per_volume"), 2),
                        fmt(r.get("manual_minutes_per_volume"), 2), fmt(r.get("clicked_dice"), 4),
                        "" if r.get("strokes") is None else r["strokes"]])
    write_atomic(out / "rounds.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "round", "images", "scorer", "spearman"])
    for rounds in report["arms"].values():
        for r in rounds:
            d = r.get("diagnostic") or {}
            for scorer_name, rho in (d.get("spearman") or {}).items():
                w.writerow([r["arm"], r["round"], d.get("images"), scorer_name, fmt(rho, 4)])
    write_atomic(out / "diagnostic.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "images", "max_clicks", *[f"dice_after_{k}" for k in (0, *CLICK_STEPS)], "noc85", "noc90"])
    for arm, s in report["summary"].items():
        c = s.get("clicks")
        if c:
            w.writerow([arm, c["images"], c["max_clicks"], *[fmt(c["dice_after"].get(str(k)), 4) for k in (0, *CLICK_STEPS)],
                        fmt(c["noc85"], 2), fmt(c["noc90"], 2)])
    write_atomic(out / "clicks.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "images", "protocol", "mean_dice"])
    for arm, s in report["summary"].items():
        c = s.get("clicks") or {}
        for protocol, value in (c.get("prompts") or {}).items():
            w.writerow([arm, c["images"], protocol, fmt(value, 4)])
    write_atomic(out / "prompts.csv", buf.getvalue().encode())
    write_json(out / "report.json", report)
    plot_curves(report, out / "curves.png")


def fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def area_under_curve(fractions: Sequence[float], dice: Sequence[float]) -> float | None:
    """Trapezoid area under Dice vs. labelled fraction, divided by the fraction span (a mean Dice)."""
    if len(fractions) < 2:
        return float(dice[0]) if dice else None
    x, y = np.asarray(fractions, dtype=float), np.asarray(dice, dtype=float)
    span = float(x[-1] - x[0])
    if span <= 0:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / span)


@contextlib.contextmanager
def dice_figure(path: Path, title: str, ylabel: str = "test mean Dice") -> Iterator[Any]:
    """A test-Dice-vs-labelled-fraction figure: yields its axes to draw on, then labels it and writes
    it to ``path`` as PNG, atomically (nothing is written when drawing fails)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        yield ax
        ax.set_xlabel("labelled fraction of the pool")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())


def draw_full(ax: Any, dice: float, band: tuple[float, float] | None = None) -> None:
    """The ``full`` arm's Dice as a dashed line (with its band), and 95 % of it dotted."""
    ax.axhline(dice, color="black", linestyle="--", linewidth=1, label=f"full ({dice:.3f})")
    if band is not None:
        ax.axhspan(band[0], band[1], color="black", alpha=0.08)
    ax.axhline(0.95 * dice, color="grey", linestyle=":", linewidth=1, label="95% of full")


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Test mean Dice vs. labelled fraction, one line per arm; ``full`` as a horizontal line."""
    cfg = report["config"]
    title = f"{Path(cfg['dataset']).name}: {cfg['per_round']}/round, {cfg['clicks']} clicks/class, seed {cfg['seed']}"
    with dice_figure(path, title) as ax:
        for arm, rounds in report["arms"].items():
            if not rounds:
                continue
            if arm == FULL:
                draw_full(ax, rounds[0]["test_mean_dice"])
                continue
            ax.plot([r["labelled_fraction"] for r in rounds], [r["test_mean_dice"] for r in rounds], marker="o", label=arm)
