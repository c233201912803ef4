"""Emulation of the active-learning loop with a virtual user (the SAIM protocol), resumable.

Protocol on a labelled dataset in MSD layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``):

1. Checks before any work: every image has a label on the same grid with known class values;
   the strategies exist; the initial fraction leaves at least 2 training images and 1
   validation image; the pool holds enough images for ``rounds x per_round``; the training
   config is valid.
2. Fixed splits from ``seed``: the cases (sorted by name) are shuffled; the first
   ``test_fraction`` are the test split, the next ``pool_size`` the pool. The first ``initial``
   pool images get their reference labels; the next ``validation`` ones too, held out of
   training to decide whether a new version replaces the current one (`ActiveLearningLoop`).
3. Pre-training once (shared by every arm) on the initial images with reference labels.
4. Each arm (a strategy, or ``full``) has its own data folder ``OUT/arms/<arm>/data``. Each
   round: the strategy selects ``per_round`` images; the virtual user annotates each (automatic
   prediction + up to ``clicks`` clicks per class; its *result* is saved as a final revision,
   never the reference); the model is fine-tuned (or trained from scratch); the current version
   is evaluated on the test split. ``full`` trains once on every pool image's reference label.
5. After every round: ``OUT/rounds.csv``, ``OUT/report.json`` and ``OUT/curves.png`` are
   rewritten (atomically) from the finished rounds.

Load: every round records the CPU its own process used (``own_cores``: CPU seconds per wall
second) and what the rest of the machine used meanwhile (``other_cores``, from ``/proc/stat``),
so timings taken on a shared machine say how shared it was; ``OUT/sessions.json`` lists each
invocation (start, end, wall time, machine, the same CPU figures).

Defaults (`EmulationConfig`, the CLI's defaults): the *small-start preset*: a pool of at most
``PRESET_POOL_SIZE`` images (the test split stays ``test_fraction`` of every case), 2 initially
labelled, ``PRESET_PER_ROUND`` per round (fewer on a small pool: `derive_per_round` keeps at least
three rounds) until ``PRESET_TARGET_FRACTION`` of the pool is labelled,
no validation images, step budgets ``max(min_steps, steps_per_image x images)`` (`Plan.budget`,
printed at the start); before each round's selection, the correlation diagnostic
(`segloop.loop.diagnostic`); each annotation's effort in minutes (`segloop.loop.effort`); see
``docs/emulation/README.md``.

Modules: `segloop.loop.emulation_setup` (settings, checks, splits, budgets),
`segloop.loop.emulation_report` (summary, CSVs, plot), `segloop.loop.emulation_files` (atomic
files, CPU figures); this one runs the arms.

Resuming: ``OUT/config.json`` pins the settings (a different setting is refused);
``OUT/arms/<arm>/rounds.json`` lists the finished rounds, which are never redone;
``OUT/arms/<arm>/round-NN.json`` records a round's selection and the annotations already saved,
so an interrupted round continues with the same images.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segloop.loop.diagnostic import arm_strategy, score_error_correlation
from segloop.loop.effort import EffortModel, annotation_effort
from segloop.loop.emulation_files import (
    CpuSnapshot,
    cpu_usage,
    machine_info,
    read_json,
    write_atomic,
    write_json,
)
from segloop.loop.emulation_report import area_under_curve, build_report, fmt, plot_curves, write_outputs
from segloop.loop.emulation_setup import (
    FULL,
    MODEL,
    OPTIONAL_KEYS,
    PRESET_INITIAL,
    PRESET_MIN_STEPS,
    PRESET_PER_ROUND,
    PRESET_POOL_SIZE,
    PRESET_PRETRAIN_FACTOR,
    PRESET_STEPS_PER_IMAGE,
    PRESET_TARGET_FRACTION,
    STEP_KEYS,
    EmulationConfig,
    EmulationError,
    Log,
    Plan,
    build_train_config,
    derive_per_round,
    describe_budgets,
    parse_initial,
    plan,
)
from segloop.loop.evaluation import evaluate_pairs, overlap_per_class
from segloop.ml.postprocess import structure_name
from segloop.store.base import Datastore

# the old private names, kept for callers of this module
_write_atomic, _write_json, _read_json = write_atomic, write_json, read_json

__all__ = [
    "FULL", "MODEL", "OPTIONAL_KEYS", "PRESET_INITIAL", "PRESET_MIN_STEPS", "PRESET_PER_ROUND", "PRESET_POOL_SIZE",
    "PRESET_PRETRAIN_FACTOR", "PRESET_STEPS_PER_IMAGE", "PRESET_TARGET_FRACTION", "STEP_KEYS", "CpuSnapshot", "Emulation",
    "EmulationConfig", "EmulationError", "Log", "Plan", "area_under_curve", "build_train_config", "cpu_usage",
    "derive_per_round", "describe_budgets", "machine_info", "parse_initial", "plan", "plot_curves", "run_emulation",
]




class Emulation:
    """Runs (or resumes) the arms of one emulation; see the module docstring."""

    def __init__(self, config: EmulationConfig, log: Log | None = None) -> None:
        self.config = config
        self.log: Log = log or (lambda _msg: None)
        self.plan = plan(config, self.log)  # all checks before any work
        self.config = self.plan.config  # with what the plan derived from the data (images per round)
        self.out = Path(config.out)
        self._refs: dict[str, np.ndarray] = {}
        self._test: list[tuple[Any, np.ndarray]] | None = None
        self._session: dict[str, Any] | None = None
        self._session_cpu: CpuSnapshot | None = None
        self._earlier_sessions: list[dict[str, Any]] = []
        self.effort = EffortModel(stroke_tolerance_voxels=self.config.stroke_tolerance)
        from segloop.loop.emulation_cost import configured

        self.measure = configured(self.plan)  # fitted to the cost in `cost_estimate`

    # --- helpers ------------------------------------------------------------------------------

    def reference(self, name: str) -> np.ndarray:
        from segloop.imaging.nifti import read_nifti

        if name not in self._refs:
            self._refs[name] = np.asarray(read_nifti(self.plan.labels[name]).array).astype(np.uint8)
        return self._refs[name]

    def test_pairs(self) -> list[tuple[Any, np.ndarray]]:
        from segloop.imaging.nifti import read_nifti_channels

        if self._test is None:
            self._test = [(read_nifti_channels(self.plan.images[n]), self.reference(n)) for n in self.plan.test]
        return self._test

    def evaluate(self, predictor: Any) -> dict[str, Any]:
        return evaluate_pairs(predictor, self.test_pairs())

    def _fill_store(self, store: Datastore, labelled: Sequence[str], names: Sequence[str]) -> None:
        from segloop.imaging.nifti import read_nifti_channels

        store.set_schema(self.plan.schema)
        wanted = set(labelled)
        for name in names:
            files = self.plan.images[name]
            rec = store.add_image(read_nifti_channels(files), name, f"file:{files[0].name}")
            if rec.id != name:
                raise EmulationError(f"case name {name!r} is not usable as an image id (got {rec.id!r})")
            if name in wanted:
                store.save_label(name, self.reference(name), author="reference", source="manual", status="final")

    def _fresh_store(self, folder: Path) -> Datastore:
        from segloop.store.local import open_datastore

        if folder.exists():
            shutil.rmtree(folder)  # an unfinished set-up: start it again
        return open_datastore(folder)

    # --- pre-training (shared) ------------------------------------------------------------------

    def pretrain(self) -> dict[str, Any]:
        from segloop.ml.predictor import Predictor
        from segloop.ml.training import train
        from segloop.store.local import open_datastore

        done_file = self.out / "pretrain" / "done.json"
        done = read_json(done_file, None)
        if done is not None:
            return dict(done)
        cfg = self.config
        t0 = time.monotonic()
        cpu0 = CpuSnapshot.now()
        minutes, steps = self.plan.budget("pretrain")
        self.log(f"pre-training on {len(self.plan.initial)} initial images ({len(self.plan.validation)} more held out for validation)")
        store = self._fresh_store(self.out / "pretrain" / "data")
        self._fill_store(store, self.plan.initial, self.plan.initial)
        pairs = [(r.image_id, r.revision) for r in store.final_labels()]
        version = train(store, MODEL, build_train_config(cfg, minutes, cfg.seed, steps), revisions=pairs, device=cfg.device)
        metrics = self.evaluate(Predictor.load(store, MODEL, version.version, device=cfg.device))
        done = {"checkpoint": str(version.checkpoint), "config": version.config, "trained_on": [list(p) for p in version.trained_on],
                "train_metrics": {k: v for k, v in version.metrics.items() if k != "history"}, "test": metrics,
                "seconds": time.monotonic() - t0, "cpu": cpu_usage(cpu0)}
        write_json(done_file, done)
        open_datastore(self.out / "pretrain" / "data").close()
        self.log(f"pre-trained: test mean Dice {metrics['mean_dice']:.3f} ({done['seconds']:.0f} s)")
        self.log(self.describe_model(version.config))
        return done

    def describe_model(self, config: dict[str, Any]) -> str:
        """One line on what the training derived from the data: grid, patch, post-processing."""
        names = self.plan.class_names
        kept = [structure_name(v, names) for v in config.get("keep_largest") or []]
        spacing = config.get("spacing")
        grid = "the images' own" if spacing is None else "x".join(f"{float(x):.3g}" for x in spacing) + " mm"
        return (f"model: grid {grid}, patch {'x'.join(str(x) for x in config.get('patch_size', []))}; automatic results "
                f"keep only the largest piece of: {', '.join(kept) or 'nothing (some structure comes in pieces)'}")

    # --- arms -------------------------------------------------------------------------------------

    def arm_dir(self, arm: str) -> Path:
        return self.out / "arms" / arm

    def arm_rounds(self, arm: str) -> list[dict[str, Any]]:
        return list(read_json(self.arm_dir(arm) / "rounds.json", []))

    def _open_arm(self, arm: str, pre: dict[str, Any]) -> Datastore:
        from segloop.store.local import open_datastore

        folder = self.arm_dir(arm)
        if (folder / "setup.json").is_file():
            return open_datastore(folder / "data")
        store = self._fresh_store(folder / "data")
        self._fill_store(store, [*self.plan.initial, *self.plan.validation], self.plan.pool)
        staged = store.staging_dir() / "pretrained.pt"
        shutil.copy(pre["checkpoint"], staged)
        store.create_model(MODEL, {"network": pre["config"]["network"], "classes": pre["config"]["classes"]})
        store.add_model_version(MODEL, staged, config=pre["config"], trained_on=[tuple(p) for p in pre["trained_on"]],
                                metrics=pre["train_metrics"])
        write_json(folder / "setup.json", {"arm": arm})
        return store

    def diagnose(self, arm: str, rnd: int, loop: Any) -> dict[str, Any] | None:
        """The correlation diagnostic before round ``rnd``'s selection (`segloop.loop.diagnostic`), saved
        in ``OUT/arms/<arm>/diagnostic-NN.json`` (a resumed round reads it back)."""
        if not self.measure.diagnose or not self.measure.diagnose_images:
            return None
        path = self.arm_dir(arm) / f"diagnostic-{rnd:02d}.json"
        done = read_json(path, None)
        if done is not None:
            return dict(done)
        ids = loop.pool()[: self.measure.diagnose_images]
        t0 = time.monotonic()
        diag = score_error_correlation(loop.predictor(), ids, loop.store.load_image, self.reference, list(self.measure.diagnose))
        diag["model_version"] = loop.current_version
        write_json(path, diag)
        rho = ", ".join(f"{n} {fmt(v, 2) or '-'}" for n, v in diag["spearman"].items())
        self.log(f"[{arm}] round {rnd}: score-error rank correlation on {diag['images']} pool images: {rho} "
                 f"({time.monotonic() - t0:.0f} s)")
        return diag

    @staticmethod
    def _steps(store: Datastore, version: int | None) -> int | None:
        """Optimiser steps of a trained version (how much a minute bought on this machine)."""
        if version is None:
            return None
        try:
            return int(store.get_model(MODEL).version(version).metrics.get("steps") or 0) or None
        except Exception:  # informative only
            return None

    def _record(self, arm: str, rnd: int, labelled: int, test: dict[str, Any], **extra: Any) -> dict[str, Any]:
        names = list(self.plan.class_names.values())
        return {
            "arm": arm, "round": rnd, "labelled": labelled, "labelled_fraction": labelled / len(self.plan.pool),
            "test_dice": {n: test["mean"][n]["dice"] for n in names}, "test_iou": {n: test["mean"][n]["iou"] for n in names},
            "test_mean_dice": test["mean_dice"], "test_mean_iou": test["mean_iou"], **extra,
        }

    def run_arm(self, arm: str, pre: dict[str, Any]) -> list[dict[str, Any]]:
        if arm == FULL:
            return self.run_full()
        from segloop.loop.active_loop import ActiveLearningLoop
        from segloop.loop.annotator import VirtualAnnotator

        cfg = self.config
        folder = self.arm_dir(arm)
        rounds = self.arm_rounds(arm)
        if not rounds:
            rounds = [self._record(arm, 0, self.plan.labelled(0), pre["test"], clicks=0, clicks_total=0,
                                   annotation_dice=None, annotation_dice_per_class=None, model_version=1,
                                   accepted=True, train_seconds=pre["seconds"], seconds=pre["seconds"], selected=[],
                                   steps=(pre.get("train_metrics") or {}).get("steps"), cpu=pre.get("cpu"))]
        if len(rounds) > self.plan.rounds:
            return rounds
        store = self._open_arm(arm, pre)
        write_json(folder / "rounds.json", rounds)
        self.write_outputs()
        # a strategy name, a named variant (e.g. tta-dice) or the error oracle, which reads the references
        strategy = arm_strategy(arm, seed=cfg.seed, reference=self.reference)
        user = VirtualAnnotator(self.reference, cfg.clicks, cfg.satisfied_dice, seed=cfg.seed, finish=cfg.finish,
                                stroke_tolerance=cfg.stroke_tolerance)
        names = self.plan.class_names
        for rnd in range(len(rounds), self.plan.rounds + 1):
            t0 = time.monotonic()
            cpu0 = CpuSnapshot.now()
            minutes, steps = self.plan.budget("round", rnd)
            loop = ActiveLearningLoop(
                store, MODEL, strategy, user, train_config=build_train_config(cfg, minutes, cfg.seed + rnd, steps),
                retrain_every=self.plan.per_round, fine_tune=cfg.fine_tune, validation_ids=self.plan.validation,
                diversity=cfg.diversity, auto_train=False, device=cfg.device,
            )
            loop.set_version(int(rounds[-1]["model_version"]))
            diag = self.diagnose(arm, rnd, loop)
            sel_file = folder / f"round-{rnd:02d}.json"
            sel = read_json(sel_file, None)
            earlier = float(sel.get("select_seconds", 0.0)) if sel is not None else 0.0  # selection time of a resumed round
            if sel is None:
                ranking = loop.select(self.plan.per_round)
                sel = {"selected": ranking.ids(), "scores": ranking.scores(), "select_seconds": ranking.seconds, "annotations": {}}
                why = {i: strategy.reasons[i] for i in sel["selected"] if i in strategy.reasons}
                if why:  # a batch-mode strategy: which rule chose each image
                    sel["reasons"] = why
                write_json(sel_file, sel)
                because = f" [{', '.join(why[i] for i in sel['selected'] if i in why)}]" if why else ""
                self.log(f"[{arm}] round {rnd}: selected {', '.join(sel['selected'])}{because} ({ranking.seconds:.1f} s)")
            for image_id in sel["selected"]:
                if image_id in sel["annotations"]:
                    continue
                ann_clicks: int | None = None
                ann_strokes: int | None = None
                clicked: dict[str, float] | None = None
                if store.get_image(image_id).label_state != "final":  # else saved before an interruption
                    outcome_ann = loop.annotate(image_id)
                    ann_clicks, ann_strokes = outcome_ann.clicks, outcome_ann.strokes
                    clicked = {names[c]: float(d) for c, d in outcome_ann.clicked_dice.items() if c in names}
                saved = store.load_label(image_id).array
                overlap = overlap_per_class(saved, self.reference(image_id), names)
                effort = annotation_effort(self.effort, ann_clicks or 0, saved, self.reference(image_id), list(names),
                                           strokes=ann_strokes or 0)
                sel["annotations"][image_id] = {"clicks": ann_clicks, "strokes": ann_strokes,
                                                "dice": {n: v["dice"] for n, v in overlap.items()},
                                                "clicked_dice": clicked, "effort": effort}
                write_json(sel_file, sel)
            t_train = time.monotonic()
            loop.start_training(force=True)
            outcome = loop.wait_for_training()
            if outcome is None or outcome.error is not None:
                raise RuntimeError(f"[{arm}] round {rnd}: training failed: {outcome.error if outcome else 'not started'}")
            train_seconds = time.monotonic() - t_train
            test = self.evaluate(loop.predictor())
            anns = [sel["annotations"][i] for i in sel["selected"]]
            clicks = int(sum(a["clicks"] or 0 for a in anns))
            per_class = {n: float(np.mean([a["dice"][n] for a in anns])) for n in names.values()}
            clicked_anns = [a["clicked_dice"] for a in anns if a.get("clicked_dice")]
            clicked_per_class = ({n: float(np.mean([c[n] for c in clicked_anns])) for n in names.values()}
                                 if clicked_anns else None)
            labelled = self.plan.labelled(rnd)
            minutes_each = [float(a["effort"]["minutes"]) for a in anns if a.get("effort")]
            manual_each = [float(a["effort"]["manual_minutes"]) for a in anns if a.get("effort")]
            rec = self._record(
                arm, rnd, labelled, test, clicks=clicks, clicks_total=int(rounds[-1]["clicks_total"]) + clicks,
                annotation_dice=float(np.mean(list(per_class.values()))), annotation_dice_per_class=per_class,
                clicked_dice=None if clicked_per_class is None else float(np.mean(list(clicked_per_class.values()))),
                clicked_dice_per_class=clicked_per_class,
                strokes=int(sum(a.get("strokes") or 0 for a in anns)),
                model_version=loop.current_version, accepted=outcome.accepted, trained_version=outcome.version,
                val_dice_new=outcome.new_score, val_dice_old=outcome.old_score, train_seconds=train_seconds,
                seconds=earlier + time.monotonic() - t0, select_seconds=float(sel.get("select_seconds", 0.0)),
                selected=sel["selected"], steps=self._steps(store, outcome.version),
                made_current_unchecked=outcome.made_current_unchecked, cpu=cpu_usage(cpu0),
                minutes_per_volume=float(np.mean(minutes_each)) if minutes_each else None,
                manual_minutes_per_volume=float(np.mean(manual_each)) if manual_each else None,
                annotation_minutes=float(np.sum(minutes_each)),
                annotation_minutes_total=float(rounds[-1].get("annotation_minutes_total") or 0.0) + float(np.sum(minutes_each)),
                diagnostic=None if diag is None else {"images": diag["images"], "spearman": diag["spearman"]},
            )
            rounds.append(rec)
            write_json(folder / "rounds.json", rounds)
            brushed = ("" if rec["clicked_dice"] is None
                       else f" (clicked result {rec['clicked_dice']:.3f}, then {rec['strokes']} brush strokes)")
            self.log(
                f"[{arm}] round {rnd}: {rec['labelled_fraction']:.0%} labelled, test Dice {rec['test_mean_dice']:.3f}, "
                f"annotation Dice {rec['annotation_dice']:.3f} with {clicks} clicks{brushed}, "
                f"{'switched to' if outcome.accepted else 'kept'} v{loop.current_version} ({rec['seconds']:.0f} s)"
            )
            self.write_outputs()
        return rounds

    def run_full(self) -> list[dict[str, Any]]:
        from segloop.ml.predictor import Predictor
        from segloop.ml.training import train

        rounds = self.arm_rounds(FULL)
        if rounds:
            return rounds
        cfg = self.config
        t0 = time.monotonic()
        cpu0 = CpuSnapshot.now()
        self.log(f"[full] training on all {len(self.plan.pool)} pool images with reference labels")
        store = self._fresh_store(self.arm_dir(FULL) / "data")
        self._fill_store(store, self.plan.pool, self.plan.pool)
        held = set(self.plan.validation)
        pairs = [(r.image_id, r.revision) for r in store.final_labels() if r.image_id not in held]
        minutes, steps = self.plan.budget("full")
        version = train(store, MODEL, build_train_config(cfg, minutes, cfg.seed, steps), revisions=pairs, device=cfg.device)
        test = self.evaluate(Predictor.load(store, MODEL, version.version, device=cfg.device))
        seconds = time.monotonic() - t0
        rec = self._record(FULL, 0, len(self.plan.pool), test, clicks=0, clicks_total=0, annotation_dice=None,
                           annotation_dice_per_class=None, model_version=version.version, accepted=True,
                           train_seconds=seconds, seconds=seconds, selected=[], steps=self._steps(store, version.version),
                           cpu=cpu_usage(cpu0))
        write_json(self.arm_dir(FULL) / "rounds.json", [rec])
        self.log(f"[full] test Dice {rec['test_mean_dice']:.3f} ({seconds:.0f} s)")
        self.write_outputs()
        return [rec]

    def run(self) -> dict[str, Any]:
        """Run or resume every arm; returns the report (also written to ``OUT/report.json``)."""
        pinned = self.config.pinned()
        cfg_file = self.out / "config.json"
        previous = read_json(cfg_file, None)
        if previous is not None and previous != pinned:
            diff = sorted(k for k in set(previous) | set(pinned) if previous.get(k) != pinned.get(k))
            raise EmulationError(
                f"{self.out} holds an emulation with other settings ({', '.join(diff)} differ): "
                "resume it with the same options or use another --out"
            )
        if previous is not None:
            self.log(f"resuming the emulation in {self.out}")
        self.log(f"{len(self.plan.test)} test / {len(self.plan.pool)} pool images; {len(self.plan.initial)} initially labelled, "
                 f"{len(self.plan.validation)} validation, {self.plan.rounds} rounds of {self.config.per_round} "
                 f"-> {self.plan.labelled(self.plan.rounds) / len(self.plan.pool):.0%} labelled")
        self.log(describe_budgets(self.plan.budgets()))
        self.cost_estimate(fresh=previous is None)  # may refuse: nothing written before it
        write_json(cfg_file, pinned)
        self._earlier_sessions = list(read_json(self.out / "sessions.json", []))
        self._session_cpu = CpuSnapshot.now()
        self._session = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info()}
        write_json(self.out / "splits.json", {"test": self.plan.test, "pool": self.plan.pool,
                                               "initial": self.plan.initial, "validation": self.plan.validation})
        pre = self.pretrain() if any(a != FULL for a in self.config.arms) else {}
        for arm in self.config.arms:
            self.run_arm(arm, pre)
            if self.click_figures(arm) is not None:
                self.write_outputs()
        return self.write_outputs()

    # --- cost ------------------------------------------------------------------------------------

    def cost_estimate(self, fresh: bool) -> dict[str, Any] | None:
        """Measure the unit costs, fit the measurements left open to them and log the run's
        estimated time (`segloop.loop.emulation_cost`), saved in ``OUT/estimate.json`` (a resumed run
        keeps the first invocation's measurements). A new run whose estimate exceeds ``max_minutes``
        is refused here, before any work; above 90 minutes without a limit, the log says what would
        shorten it."""
        from segloop.loop.emulation_cost import (
            DEFAULT_WARN_MINUTES,
            Measurements,
            advice,
            describe,
            estimate,
            fit_measurements,
            measure_unit_costs,
        )

        cfg = self.config
        history = list(read_json(self.out / "estimate.json", []))
        if history and not fresh and history[0].get("measurements"):
            first = history[0]["measurements"]
            kept = Measurements(tuple(first["diagnose"]), int(first["diagnose_images"]), int(first["noc_images"]),
                                prompt_images=first.get("prompt_images"))
            self.measure = Measurements(
                kept.diagnose if cfg.diagnose_images is None else tuple(cfg.diagnose),
                kept.diagnose_images if cfg.diagnose_images is None else int(cfg.diagnose_images),
                kept.noc_images if cfg.noc_images is None else min(int(cfg.noc_images), len(self.plan.test)),
                prompt_images=kept.prompt_images if cfg.noc_images is None else None,
            )
        if not cfg.estimate:
            return None
        threads = cfg.train.get("num_threads") if isinstance(cfg.train.get("num_threads"), int) else None
        costs = measure_unit_costs(cfg.dataset, self.plan.pool, len(self.plan.class_names) + 1, cfg.device, threads)
        if not (history and not fresh):
            self.measure = fit_measurements(self.plan, costs)
        est = estimate(self.plan, costs, self.measure)
        self.log(describe(est))
        for note in self.measure.notes:
            self.log(f"note: {note}")
        limit = cfg.max_minutes
        if limit is not None and fresh and est["total_seconds"] > 60 * limit:
            raise EmulationError(advice(est, limit) + f"\n(or raise --max-minutes; nothing was started in {self.out})")
        if limit is None and est["total_seconds"] > 60 * DEFAULT_WARN_MINUTES:
            self.log("note: " + advice(est, DEFAULT_WARN_MINUTES))
        est["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "estimate.json", [*history, est])
        return est

    # --- click figures ------------------------------------------------------------------------------

    def click_figures(self, arm: str) -> dict[str, Any] | None:
        """The interactive figures of an arm's final model (`segloop.ml.click_eval`: Dice after k
        clicks per class, NoC@85/90 capped at ``noc_clicks``; `segloop.ml.prompt_eval`: Dice per
        prompt type — box, box + 1 click, lasso, scribbles) on the first ``noc_images`` test
        images, saved in ``OUT/arms/<arm>/clicks.json`` (measured once; None when switched off)."""
        from segloop.ml.click_eval import evaluate_clicks
        from segloop.ml.predictor import Predictor
        from segloop.ml.prompt_eval import evaluate_prompts
        from segloop.store.local import open_datastore

        cfg = self.config
        path = self.arm_dir(arm) / "clicks.json"
        n_images = self.measure.noc_images
        if not n_images:
            return None
        done = read_json(path, None)
        if done is not None and done.get("images") == min(n_images, len(self.plan.test)) \
                and done.get("max_clicks") == cfg.noc_clicks and "prompts" in done:
            return dict(done)
        rounds = self.arm_rounds(arm)
        if not rounds:
            return None
        version = int(rounds[-1]["model_version"])
        store = open_datastore(self.arm_dir(arm) / "data")
        pairs = self.test_pairs()[:n_images]
        try:
            predictor = Predictor.load(store, MODEL, version, device=cfg.device)
            t0 = time.monotonic()
            if done is not None and done.get("images") == len(pairs) and done.get("max_clicks") == cfg.noc_clicks:
                figures = dict(done)  # measured before prompts were: only they are added
            else:
                figures = evaluate_clicks(predictor, pairs, max_clicks=cfg.noc_clicks, seed=cfg.seed)
                figures.update(model_version=version, labelled=rounds[-1]["labelled"],
                               seconds=round(time.monotonic() - t0, 1))
            t1 = time.monotonic()
            n_prompts = self.measure.prompts
            figures["prompts"] = (evaluate_prompts(predictor, pairs[:n_prompts], seed=cfg.seed) if n_prompts
                                  else {"images": 0, "protocols": {}})
            figures["prompts"]["seconds"] = round(time.monotonic() - t1, 1)
        finally:
            store.close()
        write_json(path, figures)
        d = figures["dice_after"]
        ks = [k for k in ("0", "1", "3", "10") if k in d]
        self.log(f"[{arm}] clicks on {figures['images']} test images: Dice after {'/'.join(ks)} clicks per class "
                 f"{'/'.join(format(d[k]['mean'], '.3f') for k in ks)}, NoC@85 {figures['noc']['85']['mean']:.1f}, "
                 f"NoC@90 {figures['noc']['90']['mean']:.1f} ({figures['seconds']:.0f} s)")
        pr = figures["prompts"]["protocols"]
        if pr:
            self.log(f"[{arm}] prompts on {figures['prompts']['images']} of those images, Dice: "
                     + ", ".join(f"{k} {v['mean']:.3f}" for k, v in pr.items()) + f" ({figures['prompts']['seconds']:.0f} s)")
        return figures

    # --- outputs ------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        arms = {arm: self.arm_rounds(arm) for arm in self.config.arms}
        clicks = {arm: read_json(self.arm_dir(arm) / "clicks.json", None) for arm in self.config.arms}
        return build_report(self.config, self.plan, arms, self.effort.describe(),
                            {a: c for a, c in clicks.items() if c is not None})

    def _sessions(self) -> list[dict[str, Any]]:
        """Earlier invocations + this one, brought up to date (``OUT/sessions.json``)."""
        if self._session is None or self._session_cpu is None:
            return list(read_json(self.out / "sessions.json", []))
        usage = cpu_usage(self._session_cpu)
        self._session.update(ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             wall_seconds=round(time.monotonic() - self._session_cpu.wall, 1), cpu=usage)
        sessions = [*self._earlier_sessions, dict(self._session)]
        write_json(self.out / "sessions.json", sessions)
        return sessions

    def write_outputs(self) -> dict[str, Any]:
        """Rewrite ``rounds.csv``, ``report.json`` and ``curves.png`` from the finished rounds."""
        sessions = self._sessions()
        report = self.report()
        report["sessions"] = sessions
        report["wall_seconds"] = round(float(sum(x.get("wall_seconds") or 0.0 for x in sessions)), 1)
        estimates = read_json(self.out / "estimate.json", [])
        if estimates:  # the first invocation's estimate of the whole run, beside what it took
            report["estimate"] = {**estimates[0], "estimated_minutes": round(estimates[0]["total_seconds"] / 60, 1),
                                  "measured_minutes": round(report["wall_seconds"] / 60, 1)}
        write_outputs(self.out, report)
        return report


def run_emulation(config: EmulationConfig, log: Log | None = None) -> dict[str, Any]:
    """Check, then run or resume an emulation (see the module docstring); returns the report."""
    return Emulation(config, log).run()
