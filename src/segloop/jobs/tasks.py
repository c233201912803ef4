"""The handlers of the job kinds: train, infer-batch, evaluate, score.

Each takes a `JobContext` and returns a JSON-friendly result dict. They import the ml layer
lazily (a child process pays for torch, the server's process need not).
"""

from __future__ import annotations

import math
from typing import Any

from segloop.jobs.context import JobContext
from segloop.jobs.records import JobRejected


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
    config = TrainConfig.from_dict(dict(p.get("config") or {}))
    revisions = p.get("revisions")
    if revisions is not None:
        revisions = [(str(i), int(r)) for i, r in revisions]
    ctx.log(f"training {p['model']!r} with {config.to_dict()}")
    last_epoch = [-1]

    def progress(tp: Any) -> None:
        epochs = max(1, int(getattr(tp, "epochs", 1) or 1))
        epoch = int(getattr(tp, "epoch", 0) or 0)
        steps = int(getattr(tp, "steps", 0) or 0)
        step = int(getattr(tp, "step", 0) or 0)
        # epochs are counted from 1 by the ml layer; clamp so either convention stays in [0, 1]
        done_epochs = max(0, min(epochs, epoch - 1 if epoch >= 1 else epoch))
        fraction = (done_epochs + (step / steps if steps else 0.0)) / epochs
        detail = _finite(
            {
                "epoch": epoch,
                "epochs": epochs,
                "step": step,
                "steps": steps,
                "loss": getattr(tp, "loss", None),
                "val_dice": getattr(tp, "val_dice", None),
                "eta_seconds": getattr(tp, "eta_seconds", None),
            }
        )
        epoch_end = detail.get("val_dice") is not None or (steps and step >= steps)
        ctx.progress(fraction, str(getattr(tp, "message", "") or ""), force=bool(epoch_end), **detail)
        if epoch_end and epoch != last_epoch[0]:
            last_epoch[0] = epoch
            ctx.metrics({k: detail[k] for k in ("epoch", "loss", "val_dice", "eta_seconds")})
            ctx.log(f"epoch {epoch}/{epochs} loss={detail.get('loss')} val_dice={detail.get('val_dice')}")

    version = train(
        ctx.store,
        p["model"],
        config,
        fine_tune=p.get("fine_tune"),
        revisions=revisions,
        progress=progress,
        cancel=ctx.cancelled,
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
    db = JobDB(ctx.root)
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


def run_score(ctx: JobContext) -> dict[str, Any]:
    """Uncertainty scores of unlabeled images for active learning: needs `segloop.activelearning`."""
    try:
        import segloop.activelearning as al  # noqa: F401
    except ModuleNotFoundError as exc:
        raise JobRejected(
            "scoring needs segloop.activelearning, which is not installed in this version; "
            "only the 'random' and 'sequential' strategies are available"
        ) from exc
    raise JobRejected("scoring is not wired to segloop.activelearning yet")
