"""Layer 4, active learning: rank the images without a final label by how much annotating them should help.

- `scores`: uncertainty numerics over probability arrays (entropy, mutual information,
  variance, label disagreement, foreground regions).
- `diversity`: image descriptors and greedy near-duplicate-avoiding batch selection.
- `strategies`: ``random``, ``sequential``, ``entropy``, ``mc-dropout``, ``tta``; `get_strategy`.
- `passes`: the shared model's forward passes used by the model-based strategies (torch).
- `cache`: the score cache (``activelearning.db`` in the data folder).
- `ranking`: `rank_pool`, batched, cached, cancellable, optionally diversity-aware.

Example::

    from segloop.activelearning import get_strategy, rank_pool
    from segloop.ml.predictor import Predictor

    predictor = Predictor.load(store, "hippocampus")
    ranking = rank_pool(store, get_strategy("entropy", foreground_only=True), predictor=predictor, limit=10)
    ranking.ids()  # annotate these first
"""

from segloop.activelearning.strategies import STRATEGIES, Strategy, get_strategy, strategy_names

__all__ = ["STRATEGIES", "Ranking", "RankingCancelled", "Strategy", "get_strategy", "rank_pool", "strategy_names"]


def __getattr__(name: str) -> object:
    # `ranking` pulls in SQLAlchemy; import it on first use.
    if name in ("rank_pool", "Ranking", "RankingCancelled"):
        from segloop.activelearning import ranking

        return getattr(ranking, name)
    raise AttributeError(name)
