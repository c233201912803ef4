"""``segloop select``: which images to annotate next, ranked by an active-learning strategy.

The same ranking as the server's ``GET /api/v1/next`` (`segloop.activelearning.rank_pool`): the
pool is every image without a final label; model-based strategies score it with the model's
current (or a chosen) version, and the scores are cached per model version in the data folder's
``activelearning.db``, so a second call with the same version costs nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from segloop.cli.common import CommandError, add_data_arg, counting_bar, open_store, print_json


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["passes=8", "foreground_only=true", "metric=mi"]`` -> ``{"passes": 8, ...}`` (JSON values, else text)."""
    from segloop.activelearning.strategies import parse_params as parse

    try:
        return parse(items)
    except ValueError as exc:
        raise CommandError(f"--param: {exc}") from exc


def cmd_select(args: argparse.Namespace) -> int:
    from segloop.activelearning import get_strategy
    from segloop.activelearning.ranking import rank_pool

    if args.count < 1:
        raise CommandError("--count must be at least 1")
    if args.diversity < 0:
        raise CommandError("--diversity must be >= 0")
    try:
        strategy = get_strategy(args.strategy, **parse_params(args.param))
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    store = open_store(args.data)
    predictor = None
    if strategy.needs_model:
        if not args.model:
            raise CommandError(f"strategy {strategy.name!r} ranks with a model: give --model NAME (see `segloop models`)")
        from segloop.ml.predictor import Predictor

        predictor = Predictor.load(store, args.model, args.version, device=args.device)
    try:
        with counting_bar(f"scoring ({strategy.name})", disable=args.json) as progress:
            ranking = rank_pool(store, strategy, predictor=predictor, limit=args.count, diversity=args.diversity,
                                cache=not args.no_cache, progress=progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print_json(ranking.to_dict())
        return 0
    if not ranking.items:
        print("nothing to select: every image has a final label")
        return 0
    model = f" with {ranking.model} v{ranking.version}" if ranking.model else ""
    print(f"{strategy.name}{model}: {len(ranking.items)} image(s), {ranking.scored} scored now, "
          f"{ranking.seconds:.1f} s")
    w = max(4, *(len(i.name) for i in ranking.items))
    print(f"{'rank':>4}  {'name':<{w}}  {'score':>8}  id")
    for item in ranking.items:
        score = "-" if strategy.name in ("random", "sequential") else f"{item.score:.4f}"
        print(f"{item.rank:>4}  {item.name:<{w}}  {score:>8}  {item.image_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from segloop.activelearning import STRATEGIES

    p = sub.add_parser(
        "select",
        help="rank the images without a final label: which to annotate next",
        description="Rank the images that have no final label with an active-learning strategy (the same "
        "ranking as GET /api/v1/next). Model-based strategies use the model's current version unless "
        "--version is given; scores are cached per model version in DIR/activelearning.db.",
    )
    add_data_arg(p)
    p.add_argument("--strategy", default="typiclust", choices=sorted(STRATEGIES),
                   help="ranking strategy (default typiclust: the one that beat random on Task04, docs/emulation)")
    p.add_argument("--model", metavar="NAME", help="model for entropy / mc-dropout / tta")
    p.add_argument("--version", type=int, help="model version (default: current)")
    p.add_argument("--count", "-n", type=int, default=5, metavar="N", help="how many to list (default 5)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy parameter, repeatable (e.g. passes=8, foreground_only=true, seed=3)")
    p.add_argument("--diversity", type=float, default=0.0, metavar="W",
                   help="penalise near-duplicate images in one batch (0: plain score order)")
    p.add_argument("--no-cache", action="store_true", help="score again, ignoring and not writing the cache")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.set_defaults(func=cmd_select)
