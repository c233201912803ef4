"""``segloop emulate``: measure active learning with a virtual user on a labelled dataset (MSD or nnU-Net raw layout).

The defaults are the *small-start preset* (`segloop.loop.emulate.PRESET_*`): options left out
are not passed, so `EmulationConfig`'s defaults apply; the help texts quote them (a unit test keeps
them in step). ``--aggregate OUT1 OUT2 ... --out AGG`` summarises finished runs (one per seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from segloop.cli.common import CommandError


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _spread(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.3f} ± {d['sd']:.3f} [{d['min']:.3f}, {d['max']:.3f}]"


def cmd_aggregate(args: argparse.Namespace) -> int:
    from segloop.loop.aggregate import aggregate, write_aggregate
    from segloop.loop.emulate import EmulationError

    try:
        agg = aggregate(args.aggregate, full_from=args.full_from or (), arms_from=args.arms_from or ())
    except EmulationError as exc:
        raise CommandError(str(exc)) from exc
    write_aggregate(agg, args.out)
    for note in agg.get("notes") or []:
        print(f"note: {note}")
    print(f"{len(agg['runs'])} run(s), seeds {agg['seeds']}: mean ± sd [min, max] over the runs")
    w = _arm_width(agg["summary"])
    print(f"{'arm':<{w}} {'rounds':>6} {'final test Dice':>28} {'AUC':>28} {'AUC - random (paired, 95% CI)':>32} "
          f"{'labels to 95% of full':>24} {'min/volume':>10}")
    for arm, s in agg["summary"].items():
        if "final_test_mean_dice" not in s:
            print(f"{arm:<{w}} {s.get('note', '')}")
            continue
        print(f"{arm:<{w}} {_fmt(s.get('rounds_used'), 'd'):>6} {_spread(s['final_test_mean_dice']):>28} "
              f"{_spread(s.get('auc')):>28} {_ci(s.get('auc_minus_random_ci')):>32} {_reach(s):>24} "
              f"{_fmt((s.get('minutes_per_volume') or {}).get('mean'), '.1f'):>10}")
    table = agg.get("score_error_spearman") or {}
    if table:
        print("score-error rank correlation (Spearman, pool images, every run x round; mean [95% CI]):")
        for name, d in table.items():
            print(f"  {name:<18} {_ci(d.get('ci'))} over {d['n']} diagnostics")
    noc = {arm: s["clicks"] for arm, s in agg["summary"].items() if s.get("clicks")}
    if noc:
        print("clicks on the test split (each run's final model; mean ± sd over the runs):")
        for arm, c in noc.items():
            d = c["dice_after"]
            print(f"  {arm:<{w}} " + ", ".join(f"k={k} {d[k]['mean']:.3f} ± {d[k]['sd']:.3f}" for k in d)
                  + f"; NoC@85 {c['noc85']['mean']:.2f}, NoC@90 {c['noc90']['mean']:.2f} ± {c['noc90']['sd']:.2f}")
    out = Path(args.out)
    print(f"wrote {out / 'aggregate.json'}, {out / 'aggregate.csv'}, {out / 'diagnostic.csv'}, {out / 'clicks.csv'}, "
          f"{out / 'curves.png'}")
    return 0


def _arm_width(arms: Any) -> int:
    """Width of the arm column: the longest arm name (typiclust-entropy), at least 10."""
    return max([10, *(len(str(a)) for a in arms)])


def _ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _reach(s: dict[str, Any]) -> str:
    """Labels needed to reach 95 % of full: mean ± sd over the runs that reached it, and how many did."""
    d = s.get("labels_to_95pct_of_full")
    if not d:
        return "-"
    got = f"{d['n']}/{s['runs']} runs"
    return got if d["mean"] is None else f"{d['mean']:.1f} ± {d['sd']:.1f} ({got})"


def cmd_emulate(args: argparse.Namespace) -> int:
    from segloop.loop.emulate import EmulationConfig, EmulationError, run_emulation

    if args.aggregate:
        return cmd_aggregate(args)
    if args.dataset is None:
        raise CommandError("--dataset DIR is required (or --aggregate OUT1 OUT2 ... to summarise finished runs)")
    train: dict[str, Any] = {}
    if args.train_config:
        try:
            train = json.loads(Path(args.train_config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"{args.train_config}: cannot read the training config ({exc})") from exc
        if not isinstance(train, dict):
            raise CommandError(f"{args.train_config}: the training config must be a JSON object")
    compare = [a for a in (args.compare or "").split(",") if a.strip()]
    preset: dict[str, Any] = {}  # only what was given: EmulationConfig's defaults are the preset
    for name in ("per_round", "rounds", "pretrain_steps", "steps_per_round", "full_steps", "validation", "pool_size",
                 "steps_per_image", "min_steps", "target_fraction", "diagnose_images"):
        if getattr(args, name) is not None:
            preset[name] = getattr(args, name)
    for name in ("pool_size", "steps_per_image"):
        if preset.get(name) == 0:  # 0: off (the whole pool / the training config's epochs)
            preset[name] = None
    if args.diagnose is not None:
        preset["diagnose"] = [] if args.diagnose.strip().lower() in ("", "none") else [
            a.strip() for a in args.diagnose.split(",") if a.strip()]
    for name in ("minutes_per_round", "pretrain_minutes", "full_minutes"):
        value = getattr(args, name)
        if value is not None:
            preset[name] = None if value <= 0 else value
    config = EmulationConfig(
        dataset=str(args.dataset), out=str(args.out), strategy=args.strategy, compare=compare, initial=args.initial,
        clicks=args.clicks, seed=args.seed, test_fraction=args.test_fraction, fine_tune=args.fine_tune, train=train,
        satisfied_dice=None if args.satisfied_dice <= 0 else args.satisfied_dice, finish=args.finish,
        stroke_tolerance=args.stroke_tolerance,
        diversity=args.diversity,
        max_cases=args.max_cases, device=args.device, noc_images=args.noc_images, noc_clicks=args.noc_clicks,
        estimate=not args.no_estimate, max_minutes=args.max_minutes, **preset,
    )
    try:
        report = run_emulation(config, None if args.quiet else _log)
    except EmulationError as exc:
        raise CommandError(str(exc)) from exc
    out = Path(args.out)
    w = _arm_width(report["summary"])
    print(f"{'arm':<{w}} {'labelled':>9} {'test Dice':>10} {'AUC':>7} {'annot. Dice':>12} {'clicks':>7} "
          f"{'labels to 95% full':>19} {'min/volume':>10} {'manual min/vol':>14}")
    for arm, s in report["summary"].items():
        auc = s.get("auc")
        ann = s.get("last_annotation_dice")
        print(f"{arm:<{w}} {s['final_labelled_fraction']:>9.1%} {s['final_test_mean_dice']:>10.3f} "
              f"{'-' if auc is None else f'{auc:.3f}':>7} {'-' if ann is None else f'{ann:.3f}':>12} "
              f"{s.get('clicks_total', 0):>7} {_fmt(s.get('labels_to_95pct_of_full'), '.1f'):>19} "
              f"{_fmt(s.get('minutes_per_volume'), '.2f'):>10} {_fmt(s.get('manual_minutes_per_volume'), '.2f'):>14}")
    rho = {arm: s.get("score_error_spearman") or {} for arm, s in report["summary"].items()}
    if any(rho.values()):
        print("score-error rank correlation (Spearman over pool images, mean over rounds):")
        for arm, table in rho.items():
            if table:
                print(f"  {arm:<{w}} " + ", ".join(f"{n} {_fmt(d['mean'], '+.2f')}" for n, d in table.items()))
    noc = {arm: s["clicks"] for arm, s in report["summary"].items() if s.get("clicks")}
    if noc:
        steps = [k for k in ("0", "1", "2", "3", "5", "10") if k in next(iter(noc.values()))["dice_after"]]
        print(f"clicks on the test split (final model; Dice after k clicks per class, NoC capped at "
              f"{next(iter(noc.values()))['max_clicks']}):")
        print(f"  {'arm':<{w}} " + " ".join(f"{'k=' + k:>6}" for k in steps) + f" {'NoC@85':>7} {'NoC@90':>7}")
        for arm, c in noc.items():
            print(f"  {arm:<{w}} " + " ".join(f"{c['dice_after'][k]:>6.3f}" for k in steps)
                  + f" {c['noc85']:>7.2f} {c['noc90']:>7.2f}")
    print(f"wrote {out / 'rounds.csv'}, {out / 'diagnostic.csv'}, {out / 'clicks.csv'}, {out / 'report.json'}, "
          f"{out / 'curves.png'}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "emulate",
        help="run the active-learning loop with a virtual user on a labelled dataset (resumable)",
        description=(
            "SAIM protocol on a dataset in the MSD or nnU-Net raw layout (imagesTr/labelsTr/dataset.json): fixed test split, pre-train on "
            "the initial fraction with reference labels, then each round select --per-round images with the strategy, "
            "let the virtual user annotate them (automatic prediction + up to --clicks clicks per class; the result "
            "is saved, not the reference), retrain or fine-tune, evaluate on the test split. Writes OUT/rounds.csv, "
            "OUT/report.json and OUT/curves.png. Run it again with the same options to resume. The defaults are the "
            "small-start preset: 2 labelled images, 4 per round (fewer on a small pool) up to 30 percent of a 60-image pool, step budgets "
            "proportional to the images trained on (printed at the start; docs/emulation/README.md). --aggregate OUT1 OUT2 ... --out AGG summarises runs that differ "
            "only in --seed (mean, sd, min-max per round)."
        ),
    )
    p.add_argument("--dataset", type=Path, default=None, metavar="DIR", help="dataset folder, MSD or nnU-Net raw layout (required to run)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT",
                   help="output folder (resumed if it holds a run; with --aggregate: where the summary goes)")
    p.add_argument("--aggregate", nargs="+", default=None, metavar="RUN",
                   help="summarise these finished emulation folders (one per seed) into OUT instead of running")
    p.add_argument("--full-from", nargs="+", default=None, metavar="RUN",
                   help="with --aggregate: earlier runs (same seeds, splits, budgets and training settings; other "
                        "strategies or annotator allowed) whose 'full' arm stands in for a run without one")
    p.add_argument("--arms-from", nargs="+", default=None, metavar="RUN",
                   help="with --aggregate: earlier runs (one per seed; same splits, budgets, training and annotator) "
                        "whose arms stand in for the arms a run lacks, e.g. a stored random arm beside a new strategy")
    p.add_argument("--strategy", default="typiclust",
                   help="strategy (random, sequential, entropy, soft-dice, mc-dropout, tta, typiclust; default typiclust)")
    p.add_argument("--compare", default=None, metavar="A,B,...",
                   help="several arms on one plot, e.g. random,entropy,full (full: all reference labels; "
                        "oracle-error: ranks by the model's actual error, the ceiling of uncertainty sampling)")
    p.add_argument("--initial", default="2", help="initially labelled part of the pool: 10%%, 0.1 or a count (default 2)")
    p.add_argument("--validation", type=int, default=None, metavar="N",
                   help="N more pool images labelled and held out of training for the version gate (default 0)")
    p.add_argument("--pool-size", type=int, default=None, metavar="N",
                   help="use at most N pool images; the test split stays --test-fraction of all cases (default 60; 0: all)")
    p.add_argument("--per-round", type=int, default=None, metavar="N", help="images annotated per round (default: from the pool, at most 4, so that "
                   "the rounds up to --target-fraction are at least 3)")
    p.add_argument("--rounds", type=int, default=None, metavar="R",
                   help="rounds (default: until --target-fraction of the pool is labelled)")
    p.add_argument("--target-fraction", type=float, default=None, metavar="F",
                   help="labelled fraction of the pool the rounds reach when --rounds is not given (default 0.3)")
    p.add_argument("--clicks", type=int, default=3, help="click budget per class and image of the virtual user")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, training and strategies")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of the cases in the fixed test split")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fine-tune", dest="fine_tune", action="store_true", default=True,
                      help="fine-tune the current version each round (default)")
    mode.add_argument("--from-scratch", dest="fine_tune", action="store_false", help="train from scratch each round")
    p.add_argument("--steps-per-image", type=int, default=None, metavar="K",
                   help="step budget of a training: K x the images it trains on, at least --min-steps (default 15; "
                        "0: the training config's epochs decide)")
    p.add_argument("--min-steps", type=int, default=None, metavar="S",
                   help="floor of the proportional step budget; pre-training's is twice this (default 150)")
    p.add_argument("--minutes-per-round", type=float, default=None, metavar="M",
                   help="a wall-time budget per round instead of steps (default: steps)")
    p.add_argument("--pretrain-minutes", type=float, default=None, help="a pre-training wall-time budget (default: steps)")
    p.add_argument("--full-minutes", type=float, default=None, help="a wall-time budget for the full arm (default: steps)")
    p.add_argument("--pretrain-steps", type=int, default=None, metavar="S",
                   help="pre-train for S optimiser steps instead of minutes (same training on a busy machine)")
    p.add_argument("--steps-per-round", type=int, default=None, metavar="S", help="fine-tune S steps per round instead of M")
    p.add_argument("--full-steps", type=int, default=None, metavar="S", help="train the full arm S steps instead of minutes")
    p.add_argument("--train-config", type=Path, default=None, metavar="JSON", help="TrainConfig overrides (JSON object)")
    p.add_argument("--satisfied-dice", type=float, default=0.95,
                   help="the virtual user stops clicking a class once its Dice reaches this (0: always use the budget)")
    p.add_argument("--finish", choices=("brush", "clicks"), default="brush",
                   help="what the virtual user saves: brush = after its clicks it brushes the remaining errors away "
                        "(the reference is saved; the strokes count as effort), clicks = the clicked result as it is "
                        "(default brush)")
    p.add_argument("--stroke-tolerance", type=int, default=1, metavar="V",
                   help="voxels of in-plane boundary disagreement the brushing virtual user leaves as it is: errors "
                        "farther from the reference's outline cost a stroke (0: every wrong voxel; default 1)")
    p.add_argument("--diversity", type=float, default=0.0, help="near-duplicate penalty weight in a batch (0: off)")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (quick checks)")
    p.add_argument("--diagnose", default=None, metavar="S,S,...",
                   help="scorers whose rank correlation with the model's error is measured on the pool each round "
                        "(default entropy,entropy-volume,soft-dice,mc-dropout-class,tta-dice; none: off)")
    p.add_argument("--diagnose-images", type=int, default=None, metavar="N",
                   help="pool images the diagnostic scores per round (default: up to 20, as many as fit 25%% of the "
                        "run's estimated time, the multi-pass scorers dropped first; 0: none)")
    p.add_argument("--noc-images", type=int, default=None, metavar="N",
                   help="test images of each arm's final click figures: Dice after 1..K clicks per class, NoC@85/90 "
                        "(default: up to 20, as many as fit 10%% of the run's estimated time; 0: none). Not pinned: "
                        "a finished run measures them when resumed")
    p.add_argument("--noc-clicks", type=int, default=20, metavar="K", help="clicks per class in those figures, NoC's cap (default 20)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="refuse to start a run whose estimated time on this machine exceeds M minutes (the estimate "
                        "and what would shorten it are printed; default: only a note above 90)")
    p.add_argument("--no-estimate", action="store_true",
                   help="skip measuring the unit costs (a few training steps and one inference) and the time estimate")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_emulate)
