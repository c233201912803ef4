"""`ActiveLearningLoop`: select -> annotate -> save -> (re)train in the background -> switch when better.

The loop holds the *current* model version: the one used to rank images and to help the
annotator. Each saved final label is counted; when ``retrain_every`` (K) final labels have
arrived since the last training started, a training (fine-tuning the current version, or from
scratch) starts in a background thread on a snapshot of the final labels, while annotation
goes on with the current version. When the training ends, both versions are scored on the
validation images (``validation_ids``; by default the new version's own validation split),
image by image, and `segloop.loop.gate.decide` says whether the new version replaces the current
one. The default rule (``gate="safety"``) is continuous fine-tuning with the gate as a safety net:
the new version is refused only when it is clearly worse (its paired 95 % interval below zero and
worse than a tolerance), so noise on a handful of validation images no longer decides the round;
``gate="strict"`` is the old rule (at least ``min_improvement`` better in mean Dice). Where `segloop.ml.training.train` takes
``make_current=False`` the new version is added without becoming current, so an unchecked
version is never the store's current one; with an older ``train`` (which makes it current) the
store's current version is set back to the old one when the new one loses. Only one training runs at a time; labels that arrived during a training start the
next one as soon as it ends.

The loop uses the `Datastore` protocol and `segloop.ml`'s public API only.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from segloop.activelearning.ranking import Ranking, rank_pool
from segloop.activelearning.strategies import Strategy, get_strategy
from segloop.loop.annotator import AnnotationTask, Annotator
from segloop.store.base import Datastore
from segloop.store.errors import NotFoundError

EventCallback = Callable[[str, dict[str, Any]], None]


def accepts_make_current(fn: Callable[..., Any]) -> bool:
    """Whether a ``train`` function takes ``make_current`` (add a version without making it current)."""
    try:
        return "make_current" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class AnnotationOutcome:
    """A saved annotation: the revision, the clicks it took, the model version that helped."""

    image_id: str
    revision: int
    clicks: int
    clicks_per_class: dict[int, int]
    seconds: float
    model_version: int | None
    strokes: int = 0
    clicked_dice: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainingOutcome:
    """One background training and the switch decision."""

    base_version: int | None
    fine_tuned_from: int | None
    trained_on: int
    version: int | None = None
    accepted: bool = False
    new_score: float | None = None
    old_score: float | None = None
    gate: dict[str, Any] | None = None  # `GateDecision.to_dict()`: rule, images, difference, interval, reason
    seconds: float = 0.0
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    made_current_unchecked: bool | None = None  # True: train() made it current before the check (set back if worse)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "base_version", "fine_tuned_from", "trained_on", "version", "accepted", "new_score", "old_score",
            "gate", "seconds", "error", "made_current_unchecked",
        )}


@dataclass
class RoundResult:
    ranking: Ranking
    annotations: list[AnnotationOutcome]


class ActiveLearningLoop:
    """The select -> annotate -> retrain loop around one shared model (see the module docstring).

    Args:
        store: the datastore.
        model: model name (its current version, if any, is where the loop starts).
        strategy: a `Strategy` or strategy name.
        annotator: who annotates (`segloop.loop.annotator.Annotator`).
        train_config: `segloop.ml.training.TrainConfig` for each (re)training.
        retrain_every: K, final labels since the last training that start a new one.
        fine_tune: fine-tune the current version (True) or train from scratch (False).
        validation_ids: images (with final labels) used to compare versions (held out of training
            unless ``train_on_validation``).
        min_improvement: mean-Dice margin the new version needs (rules ``strict`` and ``paired``).
        gate: the version gate's rule, one of `segloop.loop.gate.GATES` (default ``safety``).
        train_on_validation: also train on the validation images (for a tiny labelled set, where
            holding images out would leave too few to learn from; the gate is then a safety net
            against a collapse on images the model has seen, nothing more).
        diversity: diversity weight for `rank_pool`.
        auto_train: start trainings by themselves after saves (False: call `start_training`).
        device: torch device for training and inference (default: CUDA when available).
        on_event: ``on_event(kind, data)`` for ``"selected"``, ``"saved"``, ``"training_started"``,
            ``"training_done"``, ``"training_failed"``.
    """

    def __init__(
        self,
        store: Datastore,
        model: str,
        strategy: Strategy | str,
        annotator: Annotator,
        *,
        train_config: Any,
        retrain_every: int = 5,
        fine_tune: bool = True,
        validation_ids: Sequence[str] | None = None,
        min_improvement: float = 0.0,
        gate: str = "safety",
        train_on_validation: bool = False,
        diversity: float = 0.0,
        auto_train: bool = True,
        device: str | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        if retrain_every < 1:
            raise ValueError(f"retrain_every must be >= 1, got {retrain_every}")
        self.store = store
        self.model = model
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.annotator = annotator
        self.train_config = train_config
        self.retrain_every = int(retrain_every)
        self.fine_tune = fine_tune
        self.validation_ids = list(validation_ids or [])
        self.min_improvement = float(min_improvement)
        from segloop.loop.gate import GATES

        if gate not in GATES:
            raise ValueError(f"unknown version gate {gate!r}: choose one of {', '.join(GATES)}")
        self.gate = gate
        self.train_on_validation = bool(train_on_validation)
        self.diversity = float(diversity)
        self.auto_train = auto_train
        self.device = device
        self.on_event = on_event
        self.trainings: list[TrainingOutcome] = []
        self._lock = threading.RLock()
        self._predictor: Any = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        try:
            record = store.get_model(model)
            self._version: int | None = record.current_version
            self._snapshot: set[tuple[str, int]] = (
                set(record.version().trained_on) if record.current_version is not None else set()
            )
        except NotFoundError:
            self._version = None
            self._snapshot = set()

    # --- the shared model ---------------------------------------------------------------------

    @property
    def current_version(self) -> int | None:
        with self._lock:
            return self._version

    def set_version(self, version: int) -> None:
        """Make ``version`` the loop's (and the store's) current version."""
        self.store.set_current_version(self.model, version)
        with self._lock:
            self._version = version
            self._predictor = None

    def predictor(self) -> Any:
        """The shared `Predictor` at the current version (loaded once per version); None before any training."""
        from segloop.ml.predictor import Predictor

        with self._lock:
            if self._version is None:
                return None
            if self._predictor is None or self._predictor.version != self._version:
                self._predictor = Predictor.load(self.store, self.model, self._version, device=self.device)
            return self._predictor

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)

    # --- select and annotate ------------------------------------------------------------------

    def pool(self) -> list[str]:
        """Images that still need a final label (validation images excluded)."""
        held = set(self.validation_ids)
        return [r.id for r in self.store.list_images() if r.label_state != "final" and r.id not in held]

    def select(self, n: int, **kwargs: Any) -> Ranking:
        """The next ``n`` images to annotate, ranked by the strategy with the current version."""
        pred = self.predictor() if self.strategy.needs_model else None
        ranking = rank_pool(
            self.store, self.strategy, predictor=pred, pool=self.pool(), limit=n, diversity=self.diversity, **kwargs
        )
        self._emit("selected", ids=ranking.ids(), version=ranking.version, strategy=ranking.strategy)
        return ranking

    def annotate(self, image_id: str) -> AnnotationOutcome:
        """Hand ``image_id`` to the annotator and save the result on top of its latest revision.

        Raises:
            ConflictError: someone saved the image in the meantime (nothing is overwritten).
        """
        pred = self.predictor()
        record = self.store.get_image(image_id)
        image = self.store.load_image(image_id)
        ann = self.annotator.annotate(AnnotationTask(image_id, image, pred, record.latest_revision))
        rev = self.store.save_label(
            image_id, ann.label, author=ann.author, source=ann.source, status=ann.status,
            base_revision=record.latest_revision,
        )
        outcome = AnnotationOutcome(
            image_id, rev.revision, ann.clicks, dict(ann.clicks_per_class), ann.seconds,
            pred.version if pred is not None else None, ann.strokes, dict(ann.clicked_dice),
        )
        self._emit("saved", image_id=image_id, revision=rev.revision, clicks=ann.clicks)
        if self.auto_train:
            self.maybe_start_training()
        return outcome

    def run_round(self, n: int) -> RoundResult:
        """Select ``n`` images and annotate each (trainings start in the background as labels arrive)."""
        ranking = self.select(n)
        return RoundResult(ranking, [self.annotate(i) for i in ranking.ids()])

    # --- training -------------------------------------------------------------------------------

    def training_pairs(self) -> list[tuple[str, int]]:
        """Final labels to train on: ``(image_id, revision)``, validation images excluded (unless
        ``train_on_validation``)."""
        held = set() if self.train_on_validation else set(self.validation_ids)
        return [(r.image_id, r.revision) for r in self.store.final_labels() if r.image_id not in held]

    def new_labels(self) -> int:
        """Final labels that arrived since the last training started."""
        return len(set(self.training_pairs()) - self._snapshot)

    @property
    def training_running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def maybe_start_training(self) -> bool:
        """Start a training when K new final labels arrived and none is running."""
        if self.training_running or self.new_labels() < self.retrain_every:
            return False
        return self.start_training()

    def start_training(self, force: bool = False) -> bool:
        """Start a background training now (``force``: even without new labels). False if one is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            pairs = self.training_pairs()
            if not pairs or (not force and not set(pairs) - self._snapshot):
                return False
            self._snapshot = set(pairs)
            base = self._version
            outcome = TrainingOutcome(
                base_version=base, fine_tuned_from=base if self.fine_tune else None, trained_on=len(pairs)
            )
            self.trainings.append(outcome)
            self._cancel.clear()
            self._thread = threading.Thread(
                target=self._train, args=(outcome, pairs), name=f"al-train-{self.model}", daemon=True
            )
            self._thread.start()
        self._emit("training_started", base_version=base, labels=len(pairs))
        return True

    def wait_for_training(self, timeout: float | None = None) -> TrainingOutcome | None:
        """Block until the running training (if any) ends; the latest outcome."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            return self.trainings[-1] if self.trainings else None

    def close(self) -> None:
        """Cancel a running training and wait for it."""
        self._cancel.set()
        self.wait_for_training()

    def _validation(self, new_version: Any) -> list[tuple[str, int]]:
        if self.validation_ids:
            finals = {r.image_id: r.revision for r in self.store.final_labels()}
            return [(i, finals[i]) for i in self.validation_ids if i in finals]
        return [(str(i), int(r)) for i, r in (new_version.metrics.get("val_images") or [])]

    def _score(self, version: int, pairs: list[tuple[str, int]]) -> list[float]:
        """Per-image mean Dice of ``version`` on ``pairs`` (automatic segmentation)."""
        from segloop.loop.gate import per_image_mean_dice
        from segloop.ml.predictor import Predictor

        pred = Predictor.load(self.store, self.model, version, device=self.device)
        data = ((self.store.load_image(i), self.store.load_label(i, r).array) for i, r in pairs)
        return per_image_mean_dice(pred, data)

    def _train(self, outcome: TrainingOutcome, pairs: list[tuple[str, int]]) -> None:
        from segloop.ml.training import train

        t0 = time.monotonic()
        try:
            checked_first = accepts_make_current(train)
            extra: dict[str, Any] = {"make_current": False} if checked_first else {}
            new = train(
                self.store, self.model, self.train_config, fine_tune=outcome.fine_tuned_from, revisions=pairs,
                cancel=self._cancel, device=self.device, **extra,
            )
            outcome.made_current_unchecked = not checked_first
            outcome.version = new.version
            val = self._validation(new)
            old = outcome.base_version
            if old is None or not val:
                outcome.accepted = True
            else:
                from segloop.loop.gate import decide

                old_scores = self._score(old, val)
                new_scores = self._score(new.version, val)
                decision = decide(new_scores, old_scores, self.gate, min_improvement=self.min_improvement)
                outcome.old_score, outcome.new_score = decision.old_mean, decision.new_mean
                outcome.gate = decision.to_dict()
                outcome.accepted = decision.accepted
            if outcome.accepted:
                with self._lock:
                    self._version = new.version
                    self._predictor = None
                self.store.set_current_version(self.model, new.version)
            elif old is not None and not checked_first:
                # this train() made the new version current in the store: put the better one back.
                self.store.set_current_version(self.model, old)
            outcome.seconds = time.monotonic() - t0
            self._emit("training_done", **outcome.to_dict())
        except Exception as exc:  # recorded; the loop keeps working with the current version
            outcome.error = f"{type(exc).__name__}: {exc}"
            outcome.seconds = time.monotonic() - t0
            self._emit("training_failed", **outcome.to_dict())
        finally:
            with self._lock:
                self._thread = None
        if self.auto_train and not self._cancel.is_set():
            self.maybe_start_training()
