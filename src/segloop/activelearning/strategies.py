"""Active-learning strategies and the pool ranking (`rank_pool`).

A strategy gives each candidate image a score (higher = annotate sooner); `rank_pool` scores
the pool (by default every image whose label state is not ``final``), in batches, using the
score cache for model-based strategies, and orders it, optionally diversity-aware.

Strategies (`get_strategy(name, **params)`):

- ``random`` (``seed``): a uniform score per image derived from (seed, image id): stable.
- ``sequential``: import order (first imported first).
- ``entropy`` (``region`` = ``class`` | ``foreground`` | ``volume``, ``dilation``,
  ``foreground_only``): mean normalised voxel-wise predictive entropy of the automatic
  prediction (SAIM's criterion), by default per class over the class's predicted structure
  dilated by ``dilation`` voxels, averaged over classes (`scores.map_score`); ``volume`` is
  the whole-volume mean (background-dominated), ``foreground_only=true`` = ``region=foreground``.
- ``soft-dice`` (no parameters): the model's expected Dice loss of its own prediction,
  ``1 - soft Dice(arg-max, probabilities)`` per class, averaged (`scores.expected_dice_loss`).
- ``mc-dropout`` (``passes``, ``metric`` = ``mi`` | ``variance`` | ``dice``, ``seed``, ``region``,
  ``foreground_only``, ``dilation``): epistemic uncertainty over stochastic passes with dropout
  active (``dice``: 1 - mean Dice of each pass's segmentation to the mean one, per class).
- ``tta`` (``passes``, ``metric`` = ``disagreement`` | ``variance`` | ``entropy`` | ``dice``,
  ``seed``, ``intensity``, ``region``, ``foreground_only``, ``dilation``): aleatoric
  uncertainty over flipped / intensity-perturbed passes (flips along the axes the model was
  trained to flip).
- ``typiclust`` (``batch``, ``seed``, ``neighbours``, ``dims``, ``min_cluster``, ``then``), batch
  mode: clusters the labelled and unlabelled images' bottleneck features into ``labelled + batch``
  clusters and takes the most typical image of each cluster no label covers yet
  (`segloop.activelearning.typicality`); ``batch`` 0 = the number of images asked for; clusters of
  at most ``min_cluster`` images are not picked from; ``then=entropy``: once no cluster larger
  than that is left without a label, the rest of the batch are the candidates with the highest
  ``entropy`` score (its defaults), from the same pass.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from segloop.activelearning import scores as S
from segloop.heap import release_free_heap
from segloop.imaging.volume import Volume


class Strategy:
    """Base class: ``params`` (validated, JSON-friendly) and `score` of one image.

    A *batch-mode* strategy (``batch_mode = True``) cannot score an image alone: it orders the
    candidates by looking at all of them and at the labelled images together (`order`).
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    batch_mode: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"unknown parameter(s) for strategy {self.name!r}: {', '.join(unknown)} (known: {known})")
        self.params: dict[str, Any] = {**self.defaults, **params}
        # batch mode: the rule that chose each image of the last `order` (e.g. typical / uncertain)
        self.reasons: dict[str, str] = {}
        self._check()

    def _check(self) -> None:
        """Validate ``self.params``; raise ValueError naming the bad one."""

    def _int(self, key: str, minimum: int) -> int:
        v = self.params[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"strategy {self.name!r}: {key} must be an integer >= {minimum}, got {v!r}")
        self.params[key] = int(v)
        return int(v)

    def _choice(self, key: str, choices: Sequence[str]) -> None:
        if self.params[key] not in choices:
            raise ValueError(f"strategy {self.name!r}: {key} must be one of {', '.join(choices)}, got {self.params[key]!r}")

    @property
    def feature_kind(self) -> str:
        """Batch mode: the name under which the score cache keeps `describe`'s vector per image and
        model version (another vector, another name)."""
        return ""

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        raise NotImplementedError

    def describe(self, image_id: str, ctx: ScoringContext) -> np.ndarray:
        """Batch mode: the vector `order` needs of one image (kept in ``ctx`` and in the score cache)."""
        raise NotImplementedError(f"strategy {self.name!r} scores images one by one")

    def order(
        self, candidates: Sequence[str], labelled: Sequence[str], ctx: ScoringContext, n: int | None
    ) -> tuple[list[str], dict[str, float]]:
        """Batch-mode strategies: the first ``n`` candidates to annotate, in order, and a score per
        candidate (informative only)."""
        raise NotImplementedError(f"strategy {self.name!r} scores images one by one")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


@dataclass
class ScoringContext:
    """What a strategy may use to score one image.

    Attributes:
        load: image id -> `Volume` (reads the store).
        predictor: the shared model (`segloop.ml.predictor.Predictor`) for model-based strategies.
        order: image id -> import position (0 = first imported).
    """

    load: Callable[[str], Volume]
    predictor: Any = None
    order: dict[str, int] = field(default_factory=dict)
    _volumes: dict[str, Volume] = field(default_factory=dict)
    _prepared: dict[str, Any] = field(default_factory=dict)
    _automatic: dict[str, np.ndarray] = field(default_factory=dict)
    _features: dict[str, np.ndarray] = field(default_factory=dict)
    _descriptions: dict[str, np.ndarray] = field(default_factory=dict)

    def volume(self, image_id: str) -> Volume:
        """The image, loaded once per context (kept for the descriptor of the same batch)."""
        if image_id not in self._volumes:
            self._volumes[image_id] = self.load(image_id)
        return self._volumes[image_id]

    def prepared(self, image_id: str) -> Any:
        """The image normalised and resampled for the model (`Predictor.prepare`), once per image."""
        if self.predictor is None:
            raise ValueError("scoring with the model needs a trained model")
        if image_id not in self._prepared:
            self._prepared[image_id] = self.predictor.prepare(self.volume(image_id))
        return self._prepared[image_id]

    def automatic(self, image_id: str) -> np.ndarray:
        """The model's click-free probabilities ``(C, X, Y, Z)`` on its grid, one network pass per
        image however many deterministic scores (entropy, soft Dice, ...) or the diagnostic's
        error use them."""
        if image_id not in self._automatic:
            from segloop.activelearning.passes import plain_pass_probabilities

            data = np.asarray(self.prepared(image_id).data)
            self._automatic[image_id] = plain_pass_probabilities(self.predictor, data)
        return self._automatic[image_id]

    def features(self, image_id: str) -> np.ndarray:
        """The network's own description of the image (bottleneck per-channel mean and standard
        deviation, `passes.automatic_with_features`), from the same pass as `automatic`."""
        if image_id not in self._features:
            from segloop.activelearning.passes import automatic_with_features

            data = np.asarray(self.prepared(image_id).data)
            self._automatic[image_id], self._features[image_id] = automatic_with_features(self.predictor, data)
        return self._features[image_id]

    def description(self, image_id: str) -> np.ndarray | None:
        """A batch-mode strategy's vector of the image (`Strategy.describe`), if remembered."""
        return self._descriptions.get(image_id)

    def remember_description(self, image_id: str, vector: np.ndarray) -> None:
        """Keep ``vector`` (computed, or from the score cache) as the image's description for a
        batch-mode strategy: no network pass when it is asked for again."""
        self._descriptions[image_id] = np.asarray(vector, dtype=np.float32)

    def forget(self, image_id: str) -> None:
        """Drop what was kept for ``image_id`` (a whole-volume pass of a large image is 100s of MB);
        its feature vector and description (a few hundred floats) are kept."""
        self._volumes.pop(image_id, None)
        self._prepared.pop(image_id, None)
        self._automatic.pop(image_id, None)
        release_free_heap(min_interval=1.0)  # the freed arrays' pages, or the next image grows the heap again


def _stable_uniform(seed: int, image_id: str) -> float:
    return float(np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(image_id.encode())]).random())


class RandomStrategy(Strategy):
    name = "random"
    defaults: ClassVar[dict[str, Any]] = {"seed": 0}

    def _check(self) -> None:
        self._int("seed", 0)

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        return _stable_uniform(self.params["seed"], image_id)


class SequentialStrategy(Strategy):
    name = "sequential"

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        return -float(ctx.order.get(image_id, len(ctx.order)))


class _ModelStrategy(Strategy):
    needs_model = True

    def _check_region(self) -> None:
        if not isinstance(self.params["foreground_only"], bool):
            raise ValueError(f"strategy {self.name!r}: foreground_only must be true or false")
        self._int("dilation", 0)
        self._choice("region", S.REGIONS)

    @property
    def region(self) -> str:
        """Where the voxel map is averaged (``foreground_only=true`` means ``foreground``)."""
        return "foreground" if self.params["foreground_only"] else str(self.params["region"])

    def _prepared(self, image_id: str, ctx: ScoringContext) -> np.ndarray:
        if ctx.predictor is None:
            raise ValueError(f"strategy {self.name!r} needs a trained model")
        return np.asarray(ctx.prepared(image_id).data)

    def _automatic(self, image_id: str, ctx: ScoringContext) -> np.ndarray:
        if ctx.predictor is None:
            raise ValueError(f"strategy {self.name!r} needs a trained model")
        return ctx.automatic(image_id)

    def _seed(self, image_id: str) -> int:
        return (int(self.params.get("seed", 0)) * 1_000_003 + zlib.crc32(image_id.encode())) & 0x7FFFFFFF


class EntropyStrategy(_ModelStrategy):
    name = "entropy"
    defaults: ClassVar[dict[str, Any]] = {"region": "class", "foreground_only": False, "dilation": 2}

    def _check(self) -> None:
        self._check_region()

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        probs = self._automatic(image_id, ctx)
        return S.map_score(S.voxel_entropy(probs), probs, self.region, self.params["dilation"])


class SoftDiceStrategy(_ModelStrategy):
    name = "soft-dice"
    defaults: ClassVar[dict[str, Any]] = {}

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        return S.expected_dice_loss(self._automatic(image_id, ctx))


class McDropoutStrategy(_ModelStrategy):
    name = "mc-dropout"
    defaults: ClassVar[dict[str, Any]] = {
        "passes": 8, "metric": "mi", "seed": 0, "region": "volume", "foreground_only": False, "dilation": 2,
    }

    def _check(self) -> None:
        self._check_region()
        self._int("passes", 2)
        self._int("seed", 0)
        self._choice("metric", ("mi", "variance", "dice"))

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        from segloop.activelearning.passes import has_dropout, mc_dropout_samples

        data = self._prepared(image_id, ctx)
        if not has_dropout(ctx.predictor):
            raise ValueError(f"model {ctx.predictor.model!r} has no dropout layers: mc-dropout needs them")
        samples = mc_dropout_samples(ctx.predictor, data, self.params["passes"], self._seed(image_id))
        return S.sample_score(samples, self.params["metric"], dilation=self.params["dilation"], region=self.region)


class TtaStrategy(_ModelStrategy):
    name = "tta"
    defaults: ClassVar[dict[str, Any]] = {
        "passes": 6, "metric": "disagreement", "seed": 0, "intensity": 0.1, "region": "volume", "foreground_only": False,
        "dilation": 2,
    }

    def _check(self) -> None:
        self._check_region()
        self._int("passes", 2)
        self._int("seed", 0)
        self._choice("metric", ("disagreement", "variance", "entropy", "dice"))
        v = self.params["intensity"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"strategy 'tta': intensity must be in [0, 1), got {v!r}")

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        from segloop.activelearning.passes import tta_samples

        data = self._prepared(image_id, ctx)
        train_cfg = ctx.predictor.spec.extra.get("train") or {}
        flip_axes = [int(a) for a in train_cfg.get("flip_axes", [0])]
        samples = tta_samples(
            ctx.predictor, data, self.params["passes"], self._seed(image_id), flip_axes, float(self.params["intensity"])
        )
        return S.sample_score(samples, self.params["metric"], dilation=self.params["dilation"], region=self.region)


class TypiclustStrategy(_ModelStrategy):
    """Typical images of the clusters no label covers yet, over the network's own bottleneck
    features (`segloop.activelearning.typicality`); with ``then=entropy``, the most uncertain images
    once every sizeable cluster holds a label."""

    name = "typiclust"
    batch_mode = True
    defaults: ClassVar[dict[str, Any]] = {"batch": 0, "seed": 0, "neighbours": 20, "dims": 16, "min_cluster": 0,
                                          "then": "none"}

    def _check(self) -> None:
        self._int("batch", 0)
        self._int("seed", 0)
        self._int("neighbours", 1)
        self._int("dims", 1)
        self._int("min_cluster", 0)
        self._choice("then", ("none", "entropy"))

    @property
    def feature_kind(self) -> str:
        return "bottleneck+entropy" if self.params["then"] == "entropy" else "bottleneck"

    def score(self, image_id: str, ctx: ScoringContext) -> float:
        raise ValueError("strategy 'typiclust' ranks the pool as a whole (rank_pool), not one image at a time")

    def describe(self, image_id: str, ctx: ScoringContext) -> np.ndarray:
        """The bottleneck features (`ScoringContext.features`), with ``then=entropy`` followed by the
        image's entropy score from the same pass; the image's arrays are dropped afterwards."""
        known = ctx.description(image_id)
        if known is not None:
            return known
        if ctx.predictor is None:
            raise ValueError(f"strategy {self.name!r} needs a trained model")
        vector = ctx.features(image_id)
        if self.params["then"] == "entropy":
            vector = np.append(vector, np.float32(EntropyStrategy().score(image_id, ctx)))
        ctx.remember_description(image_id, vector)
        ctx.forget(image_id)
        return vector

    def order(
        self, candidates: Sequence[str], labelled: Sequence[str], ctx: ScoringContext, n: int | None
    ) -> tuple[list[str], dict[str, float]]:
        from segloop.activelearning.typicality import typiclust_order

        wanted = set(candidates)
        ids = list(candidates) + [i for i in labelled if i not in wanted]
        if not candidates:
            return [], {}
        vectors = np.stack([self.describe(i, ctx) for i in ids])
        uncertainty = None
        if self.params["then"] == "entropy":
            vectors, uncertainty = vectors[:, :-1], vectors[:, -1]
        flags = [False] * len(candidates) + [True] * (len(ids) - len(candidates))
        batch = self.params["batch"] or n or 4  # a whole ordering asked for (n None): rounds of 4
        picks = typiclust_order(
            vectors, flags, batch, n, seed=self.params["seed"], neighbours=self.params["neighbours"],
            dims=self.params["dims"], min_cluster=self.params["min_cluster"], uncertainty=uncertainty,
        )
        self.reasons = {ids[p]: rule for p, rule in zip(picks.order, picks.rules, strict=True)}
        return [ids[p] for p in picks.order], {ids[i]: float(picks.typicality[i]) for i in range(len(candidates))}


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RandomStrategy, SequentialStrategy, EntropyStrategy, SoftDiceStrategy, McDropoutStrategy,
                              TtaStrategy, TypiclustStrategy)
}


def strategy_names() -> list[str]:
    """The registered strategy names."""
    return list(STRATEGIES)


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["passes=8", "then=entropy"]`` -> ``{"passes": 8, "then": "entropy"}``: each value as JSON
    where it parses, else as text. ValueError for an item that is not ``KEY=VALUE``."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameter {item!r} must be KEY=VALUE (e.g. passes=8)")
        try:
            params[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[key.strip()] = text
    return params


def get_strategy(name: str, **params: Any) -> Strategy:
    """A strategy instance by name.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad parameters.
    """
    cls = STRATEGIES.get(str(name).strip().lower())
    if cls is None:
        raise ValueError(f"unknown active-learning strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return cls(**params)
