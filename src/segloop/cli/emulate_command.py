"""``segloop emulate``: measure active learning with a virtual user on a labelled MSD dataset."""

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


def cmd_emulate(args: argparse.Namespace) -> int:
    from segloop.loop.emulate import EmulationConfig, EmulationError, run_emulation

    train: dict[str, Any] = {}
    if args.train_config:
        try:
            train = json.loads(Path(args.train_config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"{args.train_config}: cannot read the training config ({exc})") from exc
        if not isinstance(train, dict):
            raise CommandError(f"{args.train_config}: the training config must be a JSON object")
    compare = [a for a in (args.compare or "").split(",") if a.strip()]
    config = EmulationConfig(
        dataset=str(args.dataset), out=str(args.out), strategy=args.strategy, compare=compare, initial=args.initial,
        per_round=args.per_round, rounds=args.rounds, clicks=args.clicks, seed=args.seed,
        test_fraction=args.test_fraction, fine_tune=args.fine_tune,
        minutes_per_round=None if args.minutes_per_round <= 0 else args.minutes_per_round,
        pretrain_minutes=args.pretrain_minutes, full_minutes=args.full_minutes, train=train,
        satisfied_dice=None if args.satisfied_dice <= 0 else args.satisfied_dice, diversity=args.diversity,
        max_cases=args.max_cases, device=args.device,
    )
    try:
        report = run_emulation(config, None if args.quiet else _log)
    except EmulationError as exc:
        raise CommandError(str(exc)) from exc
    out = Path(args.out)
    print(f"{'arm':<12} {'labelled':>9} {'test Dice':>10} {'AUC':>7} {'annot. Dice':>12} {'clicks':>7}")
    for arm, s in report["summary"].items():
        auc = s.get("auc")
        ann = s.get("last_annotation_dice")
        print(f"{arm:<12} {s['final_labelled_fraction']:>9.1%} {s['final_test_mean_dice']:>10.3f} "
              f"{'-' if auc is None else f'{auc:.3f}':>7} {'-' if ann is None else f'{ann:.3f}':>12} "
              f"{s.get('clicks_total', 0):>7}")
    print(f"wrote {out / 'rounds.csv'}, {out / 'report.json'}, {out / 'curves.png'}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "emulate",
        help="run the active-learning loop with a virtual user on a labelled dataset (resumable)",
        description=(
            "SAIM protocol on an MSD-layout dataset (imagesTr/labelsTr/dataset.json): fixed test split, pre-train on "
            "the initial fraction with reference labels, then each round select --per-round images with the strategy, "
            "let the virtual user annotate them (automatic prediction + up to --clicks clicks per class; the result "
            "is saved, not the reference), retrain or fine-tune, evaluate on the test split. Writes OUT/rounds.csv, "
            "OUT/report.json and OUT/curves.png. Run it again with the same options to resume."
        ),
    )
    p.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="MSD dataset folder")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder (resumed if it holds a run)")
    p.add_argument("--strategy", default="entropy", help="strategy (random, sequential, entropy, mc-dropout, tta)")
    p.add_argument("--compare", default=None, metavar="A,B,...",
                   help="several arms on one plot, e.g. random,entropy,full (full: all reference labels)")
    p.add_argument("--initial", default="10%", help="initially labelled part of the pool: 10%%, 0.1 or a count")
    p.add_argument("--per-round", type=int, default=10, metavar="N", help="images annotated per round")
    p.add_argument("--rounds", type=int, default=5, metavar="R", help="rounds")
    p.add_argument("--clicks", type=int, default=3, help="click budget per class and image of the virtual user")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, training and strategies")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of the cases in the fixed test split")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fine-tune", dest="fine_tune", action="store_true", default=True,
                      help="fine-tune the current version each round (default)")
    mode.add_argument("--from-scratch", dest="fine_tune", action="store_false", help="train from scratch each round")
    p.add_argument("--minutes-per-round", type=float, default=2.0, metavar="M",
                   help="training time budget per round (0: the training config's epochs decide)")
    p.add_argument("--pretrain-minutes", type=float, default=None, help="pre-training budget (default 3 x M)")
    p.add_argument("--full-minutes", type=float, default=None, help="budget of the full arm (default 3 x M)")
    p.add_argument("--train-config", type=Path, default=None, metavar="JSON", help="TrainConfig overrides (JSON object)")
    p.add_argument("--satisfied-dice", type=float, default=0.95,
                   help="the virtual user stops clicking a class once its Dice reaches this (0: always use the budget)")
    p.add_argument("--diversity", type=float, default=0.0, help="near-duplicate penalty weight in a batch (0: off)")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (quick checks)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_emulate)
