"""Training a model version from the store's labels (automatic + interactive, DeepEdit style).

Recipe (see `TrainConfig` for the knobs):

1. Pairs: the given ``revisions`` or, by default, each image's latest *final* revision.
   A fixed validation split: pairs sorted by image id, shuffled with ``seed``, the first
   ``round(n * val_split)`` (at least 1 when ``val_split > 0``) are validation images.
2. Pre-processing (`segloop.ml.preprocess`): robust per-image z-score; resampling to the
   model spacing (median spacing of the training images unless given) when an image differs.
3. Patches of ``patch_size`` (default: the median training image shape rounded up to the
   network's divisor, at most 96 per axis), centred on a foreground voxel of a random class with
   probability ``fg_ratio`` (default from the plan: 2/3, or 1/3 where a structure fills much of
   the patch), anywhere otherwise; zero-padded where the image is smaller.
4. Augmentation per patch: flips along ``flip_axes``, intensity scale/shift, gamma, Gaussian
   blur or unsharp-mask sharpening.
5. Guidance: with probability ``click_prob`` a batch gets simulated clicks: the network (eval
   mode, no gradient) predicts, the virtual user places one click per class in that class's
   largest error region, and this repeats 1..``max_click_iters`` times; the training step then
   sees the accumulated clicks and, with ``mask_input``, the prediction they correct (one-hot).
   With ``box_input``, each class present in such a batch's patch first gets its bounding box
   (grown by 0-2 voxels a side) with probability ``box_prob``, and the clicks (0..``max_click_iters``
   of them once a box is given) correct what the network makes of the boxes. Other batches see
   zero guidance and no mask (automatic segmentation).
6. Loss: soft Dice over the foreground classes + focal loss (gamma 2) with ``class_weights``;
   AdamW; learning rate decays polynomially (power 0.9) over the run, where the run's progress
   is the larger of step/total and elapsed/``max_minutes``.
7. Validation every ``val_every`` epochs: automatic (click-free) sliding-window prediction of (at
   most ``val_max_images`` of) the validation images, Dice per class; the best state (mean Dice)
   is what gets saved. Validation costs a bounded share of the run: a due validation is skipped
   while the time spent validating would exceed ``val_budget`` of the time spent so far, and the
   last epoch always validates (a run of 256x256x160 volumes once spent most of a 15-minute budget
   validating whole volumes after every 8-step epoch). The prediction is post-processed as the
   model's users get it: before the first step, the training labels decide which structures keep
   only their largest connected component (``keep_largest``, `segloop.ml.postprocess`); with
   validation images, an entry of that rule is dropped where the validation scores higher without
   it (nnU-Net's check), and the best state's validation decides what the version keeps.
8. Checkpoint: ``torch.save`` to a temporary file in ``store.staging_dir()``, then
   ``store.add_model_version`` (moves it in atomically). Any error or a cancel before that leaves
   the store untouched, so the previous version stays current.

The settings are `segloop.ml.train_config`; steps 3-5 (patches, augmentation, simulated clicks)
are `segloop.ml.patches`, step 7 is `segloop.ml.validation`; this module loads and prepares the cases
and runs the loop.

``workers > 1`` runs the same recipe as that many ranks of a torch.distributed process group,
each calling `train` with its `segloop.ml.distributed.Ranks` (own sampling stream and shard, the
batch split over the ranks, DistributedDataParallel gradients; rank 0 alone validates, reports
and saves): see that module. Without ``ranks`` (one worker) nothing here changes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segloop.heap import release_free_heap
from segloop.ml import case_cache
from segloop.ml.distributed import Ranks
from segloop.ml.fingerprint import fingerprint_arrays
from segloop.ml.modelspec import ModelSpec, load_checkpoint, parse_sigma
from segloop.ml.patches import Case, sample_batch, simulate_clicks
from segloop.ml.plan import FG_RATIO_SMALL, Plan, make_plan
from segloop.ml.postprocess import FOREGROUND, check_rule, decide_from_shares, label_shares
from segloop.ml.preprocess import resample, resampled_shape, zoom_factors
from segloop.ml.train_config import ProgressCallback, TrainConfig, TrainingCancelled, TrainProgress
from segloop.ml.validation import validate
from segloop.store.base import Datastore
from segloop.store.errors import NotFoundError
from segloop.store.records import ModelVersion

__all__ = ["ProgressCallback", "TrainConfig", "TrainProgress", "TrainingCancelled", "train"]

# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class _ImageMeta:
    """Geometry of an image whose pre-processed array is in `segloop.ml.case_cache` (not read again)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: int


def _load_pairs(store: Datastore, revisions: Sequence[tuple[str, int]] | None) -> list[tuple[str, int]]:
    if revisions is not None:
        pairs = [(str(i), int(r)) for i, r in revisions]
        for image_id, rev in pairs:
            store.get_revision(image_id, rev)  # NotFoundError when it does not exist
    else:
        pairs = [(r.image_id, r.revision) for r in store.final_labels()]
    return sorted(set(pairs))


def _split(pairs: list[tuple[str, int]], val_split: float, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    if not pairs:
        raise ValueError("no labelled images to train on: mark some label revisions final (or pass revisions)")
    n_val = max(1, int(round(len(pairs) * val_split))) if val_split > 0 else 0
    if len(pairs) - n_val < 1:
        raise ValueError(
            f"{len(pairs)} labelled image(s) is too few for a validation split of {val_split}: "
            f"need at least {n_val + 1} (or use val_split 0)"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = sorted(pairs[i] for i in order[:n_val])
    train = sorted(pairs[i] for i in order[n_val:])
    return train, val


def _prepare_case(
    image_id: str, revision: int, image: Any, label: Any, spec: ModelSpec, rng: np.random.Generator,
    prepared: np.ndarray | None = None,
) -> Case:
    """``prepared``: the image already normalised and resampled to the model grid (from the cache)."""
    # the model's own normalisation (imported models may differ)
    arr = prepared if prepared is not None else spec.normalize(image.array)
    lab = np.asarray(label.array)
    lut = {v: i for i, v in enumerate(spec.class_values)}
    values = np.unique(lab)
    unknown = [int(v) for v in values if int(v) not in lut]
    if unknown:
        raise ValueError(f"image {image_id} revision {revision}: label values {unknown} are not in the schema")
    idx = np.zeros(lab.shape, dtype=np.uint8)
    for v in values:
        idx[lab == v] = lut[int(v)]
    factors = zoom_factors(image.spacing, spec.spacing)
    if factors is not None:
        shape = resampled_shape(image.shape, factors)
        if prepared is None:
            arr = resample(arr, shape, order=1)
        idx = resample(idx, shape, order=0)
    fg = []
    for k in range(1, spec.num_classes):
        pts = np.argwhere(idx == k)
        if len(pts) > 4000:
            pts = pts[rng.choice(len(pts), 4000, replace=False)]
        fg.append(pts.astype(np.int32))
    return Case(image_id, revision, arr, idx, fg)


# ---------------------------------------------------------------------------------------------
# loss


class _DiceFocal(torch.nn.Module):
    def __init__(self, num_classes: int, class_weights: Sequence[float] | None, focal_weight: float) -> None:
        super().__init__()
        from monai.losses import DiceLoss, FocalLoss

        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        weight = list(class_weights) if class_weights is not None else [1.0] * num_classes
        if len(weight) != num_classes:
            raise ValueError(f"class_weights has {len(weight)} entries, the schema has {num_classes} classes")
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=weight)
        self.focal_weight = focal_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.focal_weight * self.focal(logits, target)


# ---------------------------------------------------------------------------------------------
# train


def _label_shares(store: Datastore, case: Case, spec: ModelSpec) -> dict[int, float]:
    """`label_shares` of a case's label (class indices on the model grid), cached per label revision."""
    key = (str(store.staging_dir()), case.image_id, case.revision, tuple(spec.spacing) if spec.spacing else None,
           tuple(spec.class_values))
    rows = case_cache.LABEL_SHARES.get(key)
    if rows is None:
        shares = label_shares(case.label, range(1, spec.num_classes))
        rows = np.array(sorted(shares.items()), dtype=np.float64).reshape(-1, 2)
        case_cache.LABEL_SHARES.put(key, rows)
    return {int(v): float(s) for v, s in rows}


def _plan_from(store: Datastore, raw: Sequence[tuple[str, int, Any, Any]], config: TrainConfig, dev: torch.device) -> Plan:
    """The data's fingerprint -> plan for a new model (images whose array was cached are read again
    only for the fingerprint's intensity statistics)."""
    modalities = [str(store.get_image(i).modality or "") for i, _, _, _ in raw]
    modality = max(set(modalities), key=modalities.count) if modalities else ""

    def items() -> Any:
        for i, _, v, lab in raw:
            vol = store.load_image(i) if isinstance(v, _ImageMeta) else v
            yield np.asarray(vol.array), vol.spacing, np.asarray(lab.array)

    fp = fingerprint_arrays(items(), modality=modality, seed=config.seed)
    return make_plan(fp, device=dev.type, arch=config.arch, network=config.network, batch_size=config.batch_size,
                     spacing=config.spacing)


def _tensorboard(log_dir: str | None, store: Datastore, model: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    path = Path(log_dir) if log_dir else store.staging_dir() / "tensorboard" / f"{model}-{int(time.time())}"
    return SummaryWriter(str(path))


def train(
    store: Datastore,
    model: str,
    config: TrainConfig,
    *,
    fine_tune: int | None = None,
    revisions: Sequence[tuple[str, int]] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    device: str | torch.device | None = None,
    make_current: bool = True,
    ranks: Ranks | None = None,
) -> ModelVersion:
    """Train (or fine-tune) ``model`` and add the result to the store as its new version.

    Args:
        store: the datastore (images, labels, models).
        model: model name; created with ``config`` when it does not exist yet.
        config: hyper-parameters.
        fine_tune: start from this version's weights (its network, classes, patch size and spacing
            are kept) instead of from scratch.
        revisions: ``(image_id, revision)`` pairs to train on; default each image's latest final revision.
        progress: called after every step and validation.
        cancel: set it to stop; the run raises `TrainingCancelled` and writes nothing.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        make_current: make the new version the model's current one (default). ``False`` adds it
            beside the current version, for a caller that decides afterwards (the active-learning
            loop keeps the old version unless the new one is at least as good on validation images).
        ranks: this process's rank of a distributed training of ``config.workers`` ranks
            (`segloop.ml.distributed.join`); every rank calls `train` with the same arguments.
            Only rank 0's ``progress`` and ``cancel`` are used (a cancel reaches the others at the
            next step); every rank returns the version rank 0 registered.

    Returns:
        The new `ModelVersion`: config (`ModelSpec` + the TrainConfig), ``trained_on`` = every
        (image_id, revision) pair used, training and validation (``metrics["val_images"]`` names
        the validation ones), and validation metrics.

    Raises:
        ValueError: bad config, no labelled images, too few for the split, mismatched channels.
        NotFoundError: unknown fine-tune version or revision.
        TrainingCancelled: ``cancel`` was set.
    """
    config.validate()
    if (ranks.world if ranks is not None else 1) != config.workers:
        raise ValueError(
            f"workers {config.workers}: train() runs one rank of a distributed training and needs its process group "
            f"(segloop.ml.distributed; jobs on Ray start the ranks: segloop serve --jobs ray)"
            if ranks is None else f"workers {config.workers} but the process group has {ranks.world} ranks"
        )
    if ranks is not None and not ranks.is_main:
        progress, cancel = None, None  # rank 0 reports; its cancel reaches this rank through Ranks.agree
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    schema = store.get_schema()
    if not schema.foreground:
        raise ValueError("the label schema has no foreground class to train on")
    pairs = _load_pairs(store, revisions)
    train_pairs, val_pairs = _split(pairs, config.val_split, config.seed)

    base_state: dict[str, Any] | None = None
    base_spec: ModelSpec | None = None
    if fine_tune is not None:
        version = store.get_model(model).version(fine_tune)
        ckpt = load_checkpoint(version.checkpoint)
        base_spec = ModelSpec.from_config(version.config or ckpt["config"])
        base_state = ckpt["state_dict"]
        schema_values = sorted(schema.values)
        if sorted(base_spec.class_values) != schema_values:
            raise ValueError(
                f"cannot fine-tune version {fine_tune}: it predicts classes {base_spec.class_values}, "
                f"the schema now has {schema_values}"
            )

    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads or max(1, min(2, os.cpu_count() or 1)))
    try:
        return _train(store, model, config, dev, schema, train_pairs, val_pairs, base_spec, base_state, fine_tune, progress, cancel,
                      make_current, ranks)
    finally:
        torch.set_num_threads(old_threads)
        release_free_heap()  # the training's batches and activations (segloop.heap)


def _train(
    store: Datastore,
    model: str,
    config: TrainConfig,
    dev: torch.device,
    schema: Any,
    train_pairs: list[tuple[str, int]],
    val_pairs: list[tuple[str, int]],
    base_spec: ModelSpec | None,
    base_state: dict[str, Any] | None,
    fine_tune: int | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    make_current: bool,
    ranks: Ranks | None = None,
) -> ModelVersion:
    t0 = time.monotonic()
    rng = np.random.default_rng(config.seed if ranks is None else ranks.seed(config.seed))
    torch.manual_seed(config.seed)  # the same initial weights on every rank

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("training cancelled; no version was written")

    def clock(step_start: bool) -> float:
        """Seconds since the start: one worker checks cancel at a step's start; ranks agree on
        stopping and on the time (so that they stop and schedule the learning rate alike)."""
        if ranks is None:
            if step_start:
                check_cancel()
            return time.monotonic() - t0
        stop, elapsed = ranks.agree(cancel is not None and cancel.is_set(), time.monotonic() - t0)
        if stop:
            raise TrainingCancelled("training cancelled; no version was written")
        return elapsed

    def report(**kw: Any) -> None:
        if progress is not None:
            progress(TrainProgress(**kw))

    # Load everything first (bad data fails before any training work).
    val_used = val_pairs
    if config.val_max_images is not None and len(val_pairs) > config.val_max_images:
        keep = np.random.default_rng(config.seed + 1).permutation(len(val_pairs))[: config.val_max_images]
        val_used = [val_pairs[i] for i in sorted(keep)]
    raw: list[tuple[str, int, Any, Any]] = []
    for image_id, rev in train_pairs + val_used:
        check_cancel()
        record = store.get_image(image_id)
        cached = case_cache.IMAGES.has_prefix((str(store.staging_dir()), image_id, str(record.created_at)))
        image: Any = _ImageMeta(record.shape, record.spacing, record.channels) if cached else store.load_image(image_id)
        raw.append((image_id, rev, image, store.load_label(image_id, rev)))
    channels = {v.channels for _, _, v, _ in raw}
    if len(channels) != 1:
        raise ValueError(f"training images have different channel counts: {sorted(channels)}")
    image_channels = channels.pop()

    training_plan: dict[str, Any] | None = None  # a fine-tune keeps its version's settings
    if base_spec is not None:
        spec = base_spec
        if spec.image_channels != image_channels:
            raise ValueError(f"the images have {image_channels} channel(s), version {fine_tune} expects {spec.image_channels}")
    else:
        values = [0] + sorted(c.value for c in schema.foreground)
        names = ["background"] + [schema.by_value(v).name for v in values[1:]]
        # settings the config leaves open come from the data: fingerprint -> plan (segloop.ml.plan)
        plan = _plan_from(store, raw[: len(train_pairs)], config, dev)
        training_plan = plan.to_dict()
        planned_steps = config.epochs * (config.steps_per_epoch or max(1, math.ceil(len(train_pairs) / config.batch_size)))
        report(epoch=0, epochs=config.epochs, step=0, steps=planned_steps, loss=None, val_dice=None, eta_seconds=None,
               message=plan.describe().replace("\n", "; "), fraction=0.0)
        net_cfg = dict(plan.network)  # the pooling of the plan's grid (the data's, or the configured spacing)
        sp = plan.spacing
        patch = plan.patch_size if config.patch_size is None else (config.patch_size[0], config.patch_size[1], config.patch_size[2])
        if config.intensity == "auto":
            intensity = plan.intensity
        else:
            intensity = config.intensity if isinstance(config.intensity, dict) else None
        spec = ModelSpec(
            net_cfg, values, names, image_channels, patch, (sp[0], sp[1], sp[2]), parse_sigma(config.guidance_sigma),
            config.mask_input,
            intensity=intensity, box_input=config.box_input,
        )
    spec.check_patch()
    if config.fg_ratio is None:  # from the plan; a fine-tune keeps its version's
        if training_plan is not None:
            fg_ratio = float(training_plan["fg_ratio"])
        else:
            before = (spec.extra.get("train") or {}).get("fg_ratio")
            fg_ratio = float(before) if isinstance(before, (int, float)) else FG_RATIO_SMALL
        config = replace(config, fg_ratio=fg_ratio)
    if config.class_weights is not None and len(config.class_weights) != spec.num_classes:
        raise ValueError(f"class_weights has {len(config.class_weights)} entries, the model has {spec.num_classes} classes")

    cases = []
    norm_key = json.dumps(spec.to_config().get("intensity"), sort_keys=True, default=str)  # imported models normalise their own way
    for i, r, img, lab in raw:
        record = store.get_image(i)
        key = (str(store.staging_dir()), i, str(record.created_at), tuple(float(x) for x in spec.spacing) if spec.spacing is not None else None, norm_key)
        prepared = case_cache.IMAGES.get(key)
        if prepared is None and isinstance(img, _ImageMeta):  # evicted or another spacing: read it after all
            img = store.load_image(i)
        case = _prepare_case(i, r, img, lab, spec, rng, prepared)
        if prepared is None:
            case_cache.IMAGES.put(key, case.image)
        cases.append(case)
    del raw
    train_cases, val_cases = cases[: len(train_pairs)], cases[len(train_pairs) :]
    # post-processing of automatic results, from this training's labels (a fine-tune decides again)
    if config.keep_largest == "auto":
        by_index = decide_from_shares(_label_shares(store, c, spec) for c in train_cases)
        largest: tuple[int, ...] = tuple(k if k == FOREGROUND else spec.class_values[k] for k in by_index)
    else:
        largest = check_rule(config.keep_largest, spec.foreground)
    spec = replace(spec, keep_largest=largest)

    net = spec.build().to(dev)
    if base_state is not None:
        net.load_state_dict(base_state)
    loss_fn = _DiceFocal(spec.num_classes, config.class_weights, config.focal_weight).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(train_cases) / config.batch_size))
    total = config.epochs * steps_per_epoch
    budget = config.max_minutes * 60.0 if config.max_minutes else None
    writer = _tensorboard(config.log_dir, store, model) if ranks is None or ranks.is_main else None
    sample_cases, batch, train_net = train_cases, config.batch_size, net
    if ranks is not None:  # this rank's shard, share of the global batch, and DDP for the gradients
        sample_cases = ranks.take_shard(train_cases, lambda c: c.image_id)
        batch, train_net = ranks.batch(config.batch_size), ranks.wrap(net)

    best_state: dict[str, torch.Tensor] | None = None
    best_score = -1.0
    best_val: dict[str, float] | None = None
    best_rule: tuple[int, ...] | None = None  # the post-processing the best state's validation kept
    best_epoch = 0
    last_val: dict[str, float] | None = None
    history: list[dict[str, Any]] = []
    step = 0
    epoch = 0
    stopped_early = False
    val_seconds = 0.0  # time spent validating so far
    val_runs = 0
    net.train()
    try:
        for epoch in range(1, config.epochs + 1):
            losses = []
            for _ in range(steps_per_epoch):
                elapsed = clock(step_start=True)
                frac = step / total
                if budget:
                    frac = max(frac, elapsed / budget)
                for g in opt.param_groups:
                    g["lr"] = config.lr * max(0.0, 1.0 - frac) ** 0.9
                imgs, labs = sample_batch(sample_cases, config, spec.patch_size, rng, batch)
                if ranks is not None:
                    ranks.saw(imgs)
                if spec.interactive and rng.random() < config.click_prob:  # automatic-only: no guidance
                    guidance = simulate_clicks(net, imgs, labs, spec, config, dev, rng)
                else:
                    guidance = np.zeros((imgs.shape[0], spec.extra_channels, *imgs.shape[2:]), dtype=np.float32)
                x = torch.from_numpy(np.concatenate([imgs, guidance], axis=1)).to(dev)
                y = torch.from_numpy(labs[:, None].astype(np.int64)).to(dev)
                opt.zero_grad(set_to_none=True)
                out = train_net(x)
                if isinstance(out, (list, tuple)):
                    out = out[0]
                loss = loss_fn(out, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at step {step + 1} (loss {loss.item()}); try a lower lr")
                loss.backward()
                opt.step()
                step += 1
                losses.append(float(loss.item()))
                if writer is not None:
                    writer.add_scalar("loss/train", losses[-1], step)
                elapsed = clock(step_start=False)
                eta = elapsed / step * (total - step)
                if budget:
                    eta = min(eta, max(0.0, budget - elapsed))
                done = step / total
                if budget:
                    done = max(done, elapsed / budget)
                report(epoch=epoch, epochs=config.epochs, step=step, steps=total, loss=losses[-1],
                       val_dice=last_val, eta_seconds=eta, message="training", fraction=min(1.0, done))
                if budget and elapsed >= budget:
                    stopped_early = True
                    break
            entry: dict[str, Any] = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None}
            last_epoch = epoch == config.epochs or stopped_early
            due = val_cases and (ranks is None or ranks.is_main) and (epoch % config.val_every == 0 or last_epoch)
            if due and not last_epoch and val_seconds > 0:
                # bounded share: skip while validating again would exceed val_budget of the time so far
                spent = time.monotonic() - t0
                due = (val_seconds + val_seconds / val_runs) <= config.val_budget * (spent + val_seconds / val_runs)
            if due:
                check_cancel()
                tv = time.monotonic()
                last_val, val_rule = validate(net, val_cases, spec, dev, confirm=config.keep_largest == "auto")
                val_seconds += time.monotonic() - tv
                val_runs += 1
                score = float(np.mean(list(last_val.values())))
                entry["val_dice"] = last_val
                if writer is not None:
                    for name, d in last_val.items():
                        writer.add_scalar(f"val_dice/{name}", d, step)
                if score > best_score:
                    best_score, best_val, best_epoch, best_rule = score, dict(last_val), epoch, val_rule
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                elapsed = time.monotonic() - t0
                report(epoch=epoch, epochs=config.epochs, step=step, steps=total, loss=entry["loss"],
                       val_dice=last_val, eta_seconds=elapsed / step * (total - step) if not stopped_early else 0.0,
                       message=f"validation: mean Dice {score:.3f}",
                       fraction=min(1.0, max(step / total, elapsed / budget if budget else 0.0)))
            history.append(entry)
            if stopped_early:
                break
    finally:
        if writer is not None:
            writer.close()

    check_cancel()
    summary = ranks.summary(net) if ranks is not None else None
    if ranks is not None and not ranks.is_main:
        shared = ranks.share_version(None)
        if shared is None:
            raise RuntimeError("rank 0 did not register the model version")
        return store.get_model(model).version(shared)
    state = best_state if best_state is not None else {k: v.detach().cpu() for k, v in net.state_dict().items()}
    from_labels = spec.keep_largest
    if best_rule is not None:
        spec = replace(spec, keep_largest=best_rule)
    spec.extra = {"train": config.to_dict(), "fine_tuned_from": fine_tune}
    version_config = spec.to_config()
    metrics: dict[str, Any] = {
        "val_dice": best_val,
        "val_mean_dice": best_score if best_val is not None else None,
        "best_epoch": best_epoch if best_val is not None else None,
        "epochs_run": epoch,
        "steps": step,
        "seconds": round(time.monotonic() - t0, 1),
        "stopped_at_time_budget": stopped_early,
        "plan": training_plan,
        "keep_largest": list(spec.keep_largest),
        "keep_largest_from_labels": list(from_labels),
        "train_images": len(train_cases),
        "val_images": [list(p) for p in val_pairs],
        "validated_on": [[c.image_id, c.revision] for c in val_cases],
        "validations": val_runs,
        "validation_seconds": round(val_seconds, 1),
        "history": history,
    }
    if summary is not None:
        metrics["distributed"] = {**summary, "global_batch": config.batch_size, "batch_per_rank": batch}
    report(epoch=epoch, epochs=config.epochs, step=step, steps=total, loss=None, val_dice=best_val,
           eta_seconds=0.0, message="saving", fraction=1.0)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{model}-", suffix=".pt", dir=store.staging_dir())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        torch.save({"format": "segloop-model/1", "state_dict": state, "config": version_config}, tmp)
        check_cancel()
        try:
            store.get_model(model)
        except NotFoundError:
            store.create_model(model, {"network": spec.network, "classes": version_config["classes"]})
        added = store.add_model_version(
            model,
            tmp,
            config=version_config,
            trained_on=train_pairs + val_pairs,
            metrics=metrics,
            make_current=make_current,
        )
        if ranks is not None:
            ranks.share_version(added.version)
        return added
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
