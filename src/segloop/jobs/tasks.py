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


def _train_config(params: dict[str, Any]) -> Any:
    from segloop.ml.training import TrainConfig

    cfg = dict(params.get("config") or {})
    threads = os.environ.get("SEGLOOP_JOB_THREADS")
    if cfg.get("num_threads") is None and threads:
        cfg["num_threads"] = int(threads)  # the runner's CPU budget for a job, not the ml default
    return TrainConfig.from_dict(cfg)


def _revisions(params: dict[str, Any]) -> list[tuple[str, int]] | None:
    revisions = params.get("revisions")
    return None if revisions is None else [(str(i), int(r)) for i, r in revisions]


def run_train(ctx: JobContext) -> dict[str, Any]:
    """params: ``model``, ``config`` (a `TrainConfig` dict), ``fine_tune`` (version number, or
    None), ``revisions`` (list of ``[image_id, revision]``, or None: all final labels), ``device``.

    With ``config["workers"]`` N > 1 this job is rank 0 of a distributed training: the executor
    starts ranks 1..N-1 (`JobContext.start_peers`; jobs on Ray only, else the job is rejected),
    each running `run_train_rank`; rank 0 reports, validates and registers the version."""
    from segloop.ml.training import train

    p = ctx.params
    config = _train_config(p)
    revisions = _revisions(p)
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

    cancel = cast(threading.Event, ctx.cancel_flag)
    if config.workers > 1:
        version = _train_distributed(ctx, config, revisions, progress, cancel)
    else:
        version = train(
            ctx.store,
            p["model"],
            config,
            fine_tune=p.get("fine_tune"),
            revisions=revisions,
            progress=progress,
            cancel=cancel,
            device=p.get("device"),
        )
    info = version.to_dict()
    ctx.event("model.version", {"model": p["model"], "version": version.version, "metrics": _finite(info.get("metrics"))})
    return {"model_version": _finite(info)}


def _train_distributed(
    ctx: JobContext, config: Any, revisions: list[tuple[str, int]] | None, progress: Any, cancel: threading.Event
) -> Any:
    """Rank 0 of a training on ``config.workers`` ranks; the others run `run_train_rank`."""
    import torch

    from segloop.ml import distributed
    from segloop.ml.training import TrainingCancelled, train

    p = ctx.params
    world = int(config.workers)
    device = torch.device(p["device"]) if p.get("device") else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peers = ctx.start_peers(world, "segloop.jobs.tasks:run_train_rank",
                            {"params": p, "root": str(ctx.root), "db_url": ctx.db_url})
    try:
        rendezvous = distributed.Rendezvous(peers.host, world)
        peers.launch(rendezvous.port)
        ctx.log(f"rank 0 of {world}: process group at {peers.host}:{rendezvous.port} ({distributed.backend_for(device)})")
        ranks: distributed.Ranks | None = None

        def poll() -> None:
            ctx.check_cancelled()
            why = peers.failure(wait=0.0)
            if why:
                raise RuntimeError(why)

        rendezvous.wait_for_ranks(poll)
        try:
            ranks = distributed.join(0, world, peers.host, rendezvous.port, device, rendezvous=rendezvous)
            version = train(ctx.store, p["model"], config, fine_tune=p.get("fine_tune"), revisions=revisions,
                            progress=progress, cancel=cancel, device=device, ranks=ranks)
        except TrainingCancelled:
            raise
        except Exception as exc:
            why = None if cancel.is_set() else peers.failure(wait=10.0)
            if why:  # the collective broke because another rank went away: say which and why
                own = (str(exc).strip().splitlines() or [""])[0][:200]
                raise RuntimeError(f"{why} (rank 0: {type(exc).__name__}: {own})") from exc
            raise
        finally:
            if ranks is not None:
                ranks.close()
        peers.finish(timeout=120.0)
        return version
    finally:
        peers.close()


def run_train_rank(*, params: dict[str, Any], root: str, db_url: str | None, rank: int, world: int, host: str,
                   port: int) -> int:
    """Rank ``rank`` (> 0) of a distributed training job: the same `train` call as rank 0's, without
    progress or cancel (they come from rank 0). Returns the version rank 0 registered."""
    from pathlib import Path

    import torch

    from segloop.ml import distributed
    from segloop.ml.training import train
    from segloop.store.local import open_datastore

    config = _train_config(params)
    device = torch.device(params["device"]) if params.get("device") else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ranks: distributed.Ranks | None = None
    store: Any = None
    try:
        # join first: a failure after it (say, the data folder missing on this node) ends this
        # rank's process group, which rank 0 notices at once
        ranks = distributed.join(rank, world, host, port, device)
        store = open_datastore(Path(root), url=db_url)
        version = train(store, params["model"], config, fine_tune=params.get("fine_tune"), revisions=_revisions(params),
                        device=device, ranks=ranks)
        return int(version.version)
    finally:
        if ranks is not None:
            ranks.close()  # also on an error: rank 0's pending collective fails now, not after a timeout
        close = getattr(store, "close", None) if store is not None else None
        if callable(close):
            close()


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
    from segloop.activelearning.cache import ScoreCache
    from segloop.activelearning.ranking import RankingCancelled, data_folder, rank_pool

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

    # the cache in the job's own database: a Ray worker has no $SEGLOOP_DB (only the task's URL),
    # and a cache opened from the environment there refused a folder bound to PostgreSQL
    cache = ScoreCache(data_folder(ctx.store), url=ctx.db_url)
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
            cache=cache,
        )
    except RankingCancelled as exc:
        raise JobCancelled(str(exc)) from exc
    finally:
        cache.close()
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
