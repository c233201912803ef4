"""The MONAI-Label-compatible `/info/`: labels, models, trainers, strategies, scoring, stats."""

from __future__ import annotations

from typing import Any

from segloop import __version__
from segloop.server.monailabel.common import (
    INTERACTIVE_SUFFIX,
    STRATEGY_TEXT,
    _job_task,
    _jobs,
    _label_names,
    route,
)
from segloop.server.routes import State, Viewer, finite
from segloop.server.state import ServerState

# --- /info ------------------------------------------------------------------------------------


def _train_stats(state: ServerState, record: Any) -> dict[str, Any]:
    best = None
    if record.current_version is not None:
        metrics = record.version().metrics or {}
        best = metrics.get("val_mean_dice")
    stats: dict[str, Any] = {"best_metric": best if best is not None else 0.0,
                             "version": record.current_version}
    running = [j for j in _jobs(state, "train", True) if j.params.get("model") == record.name]
    if running:
        d = running[0].detail or {}
        stats.update({"epoch": d.get("epoch") or 1, "total_epochs": d.get("epochs") or 1,
                      "status": "RUNNING", "job": running[0].id})
    else:
        done = [j for j in _jobs(state, "train", False) if j.params.get("model") == record.name]
        if done:
            j = done[0]
            epochs = (j.params.get("config") or {}).get("epochs") or 1
            start = j.started_at or j.created_at
            end = j.finished_at or start
            stats.update({"epoch": epochs, "total_epochs": epochs, "status": _job_task(j)["status"],
                          "total_time": round((end - start).total_seconds(), 1), "job": j.id})
    return finite(stats)


def _datastore_stats(state: ServerState) -> dict[str, Any]:
    total = state.store.count_images()
    final = state.store.count_images(label_state="final")
    draft = state.store.count_images(label_state="draft")
    return {"total": total, "completed": final,
            "label_tags": {"final": final, "latest": final + draft, "original": final + draft}}


@route("GET", "/info/")
def info(state: State, _: Viewer) -> dict[str, Any]:
    """App info: labels (the label schema), models (two entries per trained segloop model),
    trainers, strategies, scoring methods, train stats and datastore stats."""
    from segloop.activelearning.strategies import STRATEGIES

    schema = state.store.get_schema()
    labels = _label_names(schema)
    models: dict[str, Any] = {}
    trainers: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for m in state.store.list_models():
        trainers[m.name] = {"description": f"segloop training of {m.name!r} (a new version; the current one stays "
                            "usable until it finishes)", "config": {"epochs": 50, "batch_size": 2, "val_split": 0.2}}
        stats[m.name] = _train_stats(state, m)
        if m.current_version is None:
            continue
        common = {"labels": labels, "dimension": 3, "config": {},
                  "segloop": {"model": m.name, "version": m.current_version}}
        models[m.name] = {**common, "type": "segmentation",
                          "description": f"segloop model {m.name!r} v{m.current_version}: automatic segmentation; "
                          "also honours foreground/background clicks"}
        models[m.name + INTERACTIVE_SUFFIX] = {
            **common, "type": "deepgrow",
            "description": f"segloop model {m.name!r} v{m.current_version}, click-following: foreground/background "
            "points for one label; returns that label as a binary mask"}
    strategies: dict[str, dict[str, Any]] = {
        name: {"description": STRATEGY_TEXT.get(name, f"segloop strategy {name}"), "model_based": cls.needs_model}
        for name, cls in STRATEGIES.items()}
    scoring = {name: {"description": f"cache {name} scores of the unlabelled pool (background job)"}
               for name, cls in STRATEGIES.items() if cls.needs_model}
    return {
        "name": "segloop",
        "description": "segloop (MONAI-Label-compatible surface): label revisions, shared model, active learning",
        "version": __version__,
        "labels": labels,
        "models": models,
        "trainers": trainers,
        "strategies": strategies,
        "scoring": scoring,
        "train_stats": stats,
        "datastore": _datastore_stats(state),
    }
