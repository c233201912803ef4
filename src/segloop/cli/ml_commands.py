"""ML commands: ``train``, ``models``, ``infer``, ``evaluate``."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segloop.cli.common import CommandError, add_data_arg, counting_bar, open_store, print_json


def _resolve_image(store: Any, ref: str) -> str:
    """An image id from an id or a (unique) image name."""
    from segloop.store.errors import NotFoundError

    try:
        return str(store.get_image(ref).id)
    except NotFoundError:
        pass
    matches = [r.id for r in store.list_images() if r.name == ref]
    if len(matches) == 1:
        return str(matches[0])
    if len(matches) > 1:
        raise CommandError(f"image name {ref!r} is ambiguous ({len(matches)} images): give the image id")
    raise CommandError(f"image {ref!r} not found (give an image id or name; see `segloop images`)")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "segloop"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def cmd_train(args: argparse.Namespace) -> int:
    from segloop.ml.training import TrainConfig, TrainingCancelled, TrainProgress, train
    from segloop.store.local import check_model_name

    check_model_name(args.model)  # before minutes of training, not at save time
    store = open_store(args.data)
    cfg: dict[str, Any] = {}
    if args.config:
        try:
            cfg = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"{args.config}: cannot read the training config ({exc})") from exc
        if not isinstance(cfg, dict):
            raise CommandError(f"{args.config}: the training config must be a JSON object")
    for key in ("arch", "epochs", "lr", "batch_size", "val_split", "seed", "max_minutes", "steps_per_epoch"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    try:
        config = TrainConfig.from_dict(cfg)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if config.workers > 1:
        raise CommandError(
            f"workers {config.workers}: `segloop train` trains in this process, on one worker. A training on several "
            f"workers runs as a job on Ray: start `segloop serve --jobs ray` (or --jobs ray://HOST:PORT) and POST "
            f"/api/v1/models/{args.model}/train with {{\"config\": {{\"workers\": {config.workers}}}}} (docs/deploy.md)"
        )
    bar: tqdm | None = None
    last_val: dict[str, float] | None = None

    def progress(p: TrainProgress) -> None:
        nonlocal bar, last_val
        if args.quiet:
            return
        if p.message.startswith("plan: "):  # the data's fingerprint -> plan, before the first step
            for line in p.message.split("; plan: "):
                print(line if line.startswith("plan: ") else f"plan: {line}", file=sys.stderr)
            return
        if bar is None:
            bar = tqdm(total=p.steps, desc=f"training {args.model}", unit="step", file=sys.stderr)
        bar.update(p.step - bar.n)
        if p.val_dice:
            last_val = p.val_dice
        post = {"epoch": f"{p.epoch}/{p.epochs}"}
        if p.loss is not None:
            post["loss"] = f"{p.loss:.3f}"
        if last_val:
            post.update({k: f"{v:.3f}" for k, v in last_val.items()})
        bar.set_postfix(post, refresh=False)

    try:
        version = train(
            store, args.model, config, fine_tune=args.fine_tune, progress=progress, device=args.device
        )
    except TrainingCancelled as exc:
        raise CommandError(str(exc), exit_code=130) from exc
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print_json(version.to_dict())
        return 0
    m = version.metrics
    val = ", ".join(f"{k} {v:.3f}" for k, v in (m.get("val_dice") or {}).items()) or "no validation"
    print(f"{args.model} version {version.version}: {m.get('steps')} steps in {m.get('seconds')} s, "
          f"{len(version.trained_on)} labelled images; validation Dice: {val}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.data is None:
        raise CommandError("the following arguments are required: --data")
    store = open_store(args.data)
    models = store.list_models()
    if args.json:
        print_json([m.to_dict() for m in models])
        return 0
    if not models:
        print("no models yet (train one with `segloop train MODEL --data DIR`)")
        return 0
    for m in models:
        arch = (m.config.get("network") or {}).get("arch", "?")
        print(f"{m.name}  ({arch}, current version: {m.current_version if m.current_version is not None else '-'})")
        for v in m.versions:
            mark = "*" if v.version == m.current_version else " "
            val = v.metrics.get("val_dice") or {}
            scores = "  ".join(f"{k} {_fmt(d)}" for k, d in val.items()) or "no validation"
            print(f"  {mark} v{v.version}  {v.created_at:%Y-%m-%d %H:%M}  {len(v.trained_on):4d} images  val Dice: {scores}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from segloop.imaging.nifti import write_nifti
    from segloop.ml.clicks import parse_clicks
    from segloop.ml.predictor import Predictor

    if not args.save and args.output is None:
        raise CommandError("nothing to do: give -o OUT.nii.gz and/or --save")
    store = open_store(args.data)
    image_id = _resolve_image(store, args.image)
    spec = None
    if args.clicks:
        try:
            spec = json.loads(Path(args.clicks).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"{args.clicks}: cannot read the clicks file ({exc})") from exc
    predictor = Predictor.load(store, args.model, args.version, device=args.device)
    image = store.load_image(image_id)
    try:
        if spec is not None:
            clicks = parse_clicks(spec, store.get_schema(), image.shape, values=predictor.class_values)
            session = predictor.session(image)
            result = session.add_clicks(clicks) if clicks else session.prediction
        else:
            clicks = []
            result = predictor.predict(image)
    except ValueError as exc:
        raise CommandError(f"{args.clicks or args.image}: {exc}") from exc
    out: dict[str, Any] = {"image_id": image_id, "model": result.model, "version": result.version,
                           "clicks": len(clicks), "seconds": round(result.seconds, 3)}
    counts = {int(v): int((result.label.array == v).sum()) for v in predictor.class_values if v}
    out["voxel_counts"] = counts
    if args.output is not None:
        write_nifti(result.label, args.output, dtype=np.uint8)
        out["output"] = str(args.output)
    if args.save:
        latest = store.get_image(image_id).latest_revision
        rev = store.save_label(
            image_id,
            result.label,
            author=args.author or _user(),
            source=f"model:{result.model}@{result.version}",
            status="draft",
            base_revision=latest,
        )
        out["revision"] = rev.revision
    if args.json:
        print_json(out)
    else:
        parts = [f"{image_id}: {args.model} v{result.version}", f"{len(clicks)} click(s)",
                 ", ".join(f"class {k}: {n} voxels" for k, n in counts.items())]
        if "output" in out:
            parts.append(f"wrote {out['output']}")
        if "revision" in out:
            parts.append(f"saved revision {out['revision']} (draft)")
        print("; ".join(parts))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segloop.ml.evaluate import evaluate_model

    store = open_store(args.data)
    ids = [_resolve_image(store, i) for i in args.images] if args.images else None
    try:
        with counting_bar(f"evaluating {args.model}") as progress:
            report = evaluate_model(store, args.model, args.version, ids, progress=progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    classes = report["classes"]
    w = max([5, *(len(c) for c in classes)])
    print(f"{args.model} v{report['version']} on {len(report['per_image'])} image(s)")
    print(f"{'class':<{w}}  {'Dice':>6}  {'IoU':>6}  {'HD95 mm':>8}")
    for c in classes:
        m = report["mean"][c]
        print(f"{c:<{w}}  {_fmt(m['dice']):>6}  {_fmt(m['iou']):>6}  {_fmt(m['hd95'], 2):>8}")
    print(f"{'mean':<{w}}  {_fmt(report['mean_dice']):>6}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or fine-tune) a model on the final labels",
                       description="Train a new version of MODEL on each image's latest final label revision.")
    p.add_argument("model", metavar="MODEL", help="model name (created on first training)")
    add_data_arg(p)
    p.add_argument("--arch", help="architecture: unet (default), dynunet, segresnet")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (AdamW)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--val-split", type=float, dest="val_split", help="fraction of labelled images held out (default 0.2)")
    p.add_argument("--steps-per-epoch", type=int, dest="steps_per_epoch")
    p.add_argument("--max-minutes", type=float, dest="max_minutes", help="stop after this wall time, keeping the best state")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", type=Path, metavar="FILE.json", help="training config (TrainConfig fields); flags override it")
    p.add_argument("--fine-tune", type=int, dest="fine_tune", metavar="VERSION", help="start from this version's weights")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the new version as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list models, their versions and validation metrics")
    add_data_arg(p, required=False)  # checked in cmd_models: `models import PATH --data D` has its own --data
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("infer", help="segment an image (optionally refined with clicks)",
                       description='Clicks file: JSON list like [{"class": "anterior", "points": [[i, j, k]]}, '
                                   '{"class": "background", "points": [[i, j, k]]}] (class by name or value; '
                                   'voxel indices of the image as stored).')
    p.add_argument("model", metavar="MODEL")
    p.add_argument("image", metavar="IMAGE", help="image id (or unique name)")
    add_data_arg(p)
    p.add_argument("--version", type=int, help="model version (default: current)")
    p.add_argument("--clicks", type=Path, metavar="FILE.json", help="clicks to refine the segmentation with")
    p.add_argument("--save", action="store_true", help="store the result as a new draft label revision")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.nii.gz", help="write the label map here")
    p.add_argument("--author", default=None, help="author of the saved revision (default: your user name)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("evaluate", help="Dice / IoU / HD95 of a model against the final labels")
    p.add_argument("model", metavar="MODEL")
    add_data_arg(p)
    p.add_argument("--version", type=int, help="model version (default: current)")
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="image ids or names (default: all with a final label)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write per-image and mean values here")
    p.set_defaults(func=cmd_evaluate)
