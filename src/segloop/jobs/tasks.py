"""The handlers of the job kinds: train, infer-batch, evaluate, score.

Each takes a `JobContext` and returns a JSON-friendly result dict. They import the ml layer
lazily (a child process pays for torch, the server's process need not).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, cast

from segloop.jobs.context import JobContext
from segloop.jobs.records import JobCancelled, JobRejected


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def run_train(ctx: JobContext) -> dict[str, Any]:
    """params: ``model``, ``config`` (a `TrainConfig` dict), ``fine_tune`` (version number, or
    None), ``revisions`` (list of ``[image_id, revision]``, or None: all final labels), ``device``."""
    from segloop.ml.training import TrainConfig, train

    p = ctx.params
    cfg = dict(p.get("config") or {})
    threads = os.environ.get("SEGLOOP_JOB_THREADS")
    if cfg.get("num_threads") is None and threads:
        cfg["num_threads"] = int(threads)  # the runner's CPU budget for a job, not the ml default
    config = TrainConfig.from_dict(cfg)
    revisions = p.get("revisions")
    if revisions is not None:
        revisions = [(str(i), int(r)) for i, r in revisions]
    ctx.log(f"training {p['model']!r} with {config.to_dict()}")
    state: dict[str, Any] = {"epoch": None, "loss": None}

    def progress(tp: Any) -> None:
        steps = int(tp.steps or 0)
        fraction = getattr(tp, "fraction", None)  # counts the time limit too
        if fraction is None:
            fraction = (tp.step / steps) if steps else None
        detail = _finite(
            {
                "epoch": tp.epoch,
                "epochs": tp.epochs,
                "step": tp.step,
                "steps": steps,
                "loss": tp.loss,
                "val_dice": tp.val_dice,
                "eta_seconds": tp.eta_seconds,
            }
        )
        message = str(tp.message or "")
        validation = message.startswith("validation")
        new_epoch = state["epoch"] is not None and tp.epoch != state["epoch"]
        if new_epoch and not state.get("validated"):
            # the previous epoch ended without validation: record its last loss
            ctx.metrics({"epoch": state["epoch"], "loss": state["loss"], "val_dice": None})
        if new_epoch:
            state["validated"] = False
        if validation:
            state["validated"] = True
            ctx.metrics({k: detail[k] for k in ("epoch", "step", "loss", "val_dice", "eta_seconds")})
            ctx.log(f"epoch {tp.epoch}/{tp.epochs}: loss {detail['loss']}, {message}")
        state["epoch"] = tp.epoch
        if tp.loss is not None:
            state["loss"] = detail["loss"]
        ctx.progress(fraction, message, force=validation or new_epoch or message == "saving", **detail)

    version = train(
        ctx.store,
        p["model"],
        config,
        fine_tune=p.get("fine_tune"),
        revisions=revisions,
        progress=progress,
        cancel=cast(threading.Event, ctx.cancel_flag),
        device=p.get("device"),
    )
    info = version.to_dict()
    ctx.event("model.version", {"model": p["model"], "version": version.version, "metrics": _finite(info.get("metrics"))})
    return {"model_version": _finite(info)}


def run_infer_batch(ctx: JobContext) -> dict[str, Any]:
    """params: ``model``, ``version`` (None: current), ``image_ids`` (None: every image without a
    label), ``save`` (default True: save each prediction as a draft revision), ``author``."""
    from segloop.ml.predictor import Predictor

    p = ctx.params
    store = ctx.store
    predictor = Predictor.load(store, p["model"], p.get("version"))
    image_ids = p.get("image_ids")
    if image_ids is None:
        image_ids = [r.id for r in store.list_images(label_state="none")]
    save = bool(p.get("save", True))
    author = str(p.get("author") or "segloop")
    done: list[dict[str, Any]] = []
    n = len(image_ids)
    for i, image_id in enumerate(image_ids):
        ctx.check_cancelled()
        ctx.progress(i / n if n else 1.0, f"image {i + 1}/{n}", image=image_id, done=i, total=n)
        pred = predictor.predict(store.load_image(image_id))
        entry: dict[str, Any] = {"image_id": image_id, "seconds": pred.seconds}
        if save:
            latest = store.get_image(image_id).latest_revision
            rev = store.save_label(
                image_id,
                pred.label,
                author=author,
                source=f"model:{pred.model}@{pred.version}",
                status="draft",
                base_revision=latest,
            )
            entry["revision"] = rev.revision
            ctx.event("label.revision", rev.to_dict())
        done.append(entry)
        ctx.log(f"{image_id}: predicted in {pred.seconds:.2f}s" + (f", revision {entry['revision']}" if save else ""))
    return {"model": p["model"], "version": predictor_version(predictor), "images": done}


def predictor_version(predictor: Any) -> Any:
    return getattr(predictor, "version", None)


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    """params: ``model``, ``version`` (None: current), ``image_ids`` (None: all final labels).
    The result is also recorded in the evaluation history."""
    from segloop.jobs.db import JobDB
    from segloop.ml.evaluate import evaluate_model

    p = ctx.params

    def progress(*args: Any, **kwargs: Any) -> None:
        ctx.check_cancelled()
        done = args[0] if args else kwargs.get("done")
        total = args[1] if len(args) > 1 else kwargs.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total:
            ctx.progress(float(done) / float(total), f"image {done}/{total}")

    result = _finite(
        evaluate_model(ctx.store, p["model"], p.get("version"), image_ids=p.get("image_ids"), progress=progress)
    )
    version = p.get("version")
    if version is None:
        version = ctx.store.get_model(p["model"]).current_version
    db = JobDB(ctx.root, url=ctx.db_url)
    try:
        record = db.add_evaluation(
            "model-dataset",
            {"model": p["model"], "version": version, "image_ids": p.get("image_ids")},
            result,
            author=p.get("author"),
            job_id=ctx.job_id,
        )
    finally:
        db.dispose()
    ctx.event("evaluation", {"id": record["id"], "model": p["model"], "version": version})
    return {"evaluation_id": record["id"], "model": p["model"], "version": version, "mean": result.get("mean")}


def score_resource(model: str, version: int, strategy: str, params: dict[str, Any]) -> str:
    """Exclusivity key of a score job: one active job per (model, version, strategy, parameters)."""
    import hashlib
    import json

    key = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]
    return f"score:{model}@{version}:{strategy}:{digest}"


def run_score(ctx: JobContext) -> dict[str, Any]:
    """Score the active-learning pool and fill the score cache (``activelearning.db``).

    params: ``model``, ``version`` (None: the current one when the job starts), ``strategy``
    (a `segloop.activelearning` strategy name), ``strategy_params`` (dict, default: the
    strategy's defaults), ``pool`` (image ids; None: every image without a final label),
    ``diversity`` (> 0 also computes and caches the images' diversity descriptors),
    ``batch_size`` (images between cache writes / progress reports / cancel checks; default 4),
    ``device``. Images already in the cache for (model, version, strategy, params) are not
    scored again, so a cancelled or failed job loses nothing it had finished.
    """
    from segloop.activelearning import get_strategy
    from segloop.activelearning.ranking import RankingCancelled, rank_pool

    p = ctx.params
    try:
        strategy = get_strategy(str(p.get("strategy") or ""), **dict(p.get("strategy_params") or {}))
    except ValueError as exc:
        raise JobRejected(str(exc)) from exc
    predictor = None
    if strategy.needs_model:
        from segloop.ml.predictor import Predictor

        ctx.progress(0.0, "loading the model", force=True)
        predictor = Predictor.load(ctx.store, p["model"], p.get("version"), device=p.get("device"))
    pool = p.get("pool")
    ctx.log(
        f"scoring with {strategy!r}"
        + (f" on {predictor.model!r} version {predictor.version}" if predictor is not None else "")
        + (f", {len(pool)} image(s)" if pool is not None else ", every image without a final label")
    )

    def progress(done: int, total: int) -> None:
        ctx.progress(done / total if total else 1.0, f"scored {done}/{total}", done=done, total=total)

    try:
        ranking = rank_pool(
            ctx.store,
            strategy,
            predictor=predictor,
            pool=[str(i) for i in pool] if pool is not None else None,
            diversity=float(p.get("diversity") or 0.0),
            batch_size=int(p.get("batch_size") or 4),
            progress=progress,
            cancel=cast(threading.Event, ctx.cancel_flag),
        )
    except RankingCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    ctx.log(f"scored {ranking.scored} image(s), {len(ranking.items) - ranking.scored} from the cache, "
            f"in {ranking.seconds:.1f}s")
    return {
        "model": ranking.model,
        "version": ranking.version,
        "strategy": ranking.strategy,
        "params": ranking.params,
        "pool": len(ranking.items),
        "scored": ranking.scored,
        "cached": len(ranking.items) - ranking.scored,
        "seconds": round(ranking.seconds, 3),
        "top": [_finite(i.to_dict()) for i in ranking.items[:20]],
    }
