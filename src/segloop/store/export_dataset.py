"""``segloop export-dataset``: every labelled image as a training set for other tools.

Layouts:

- ``msd`` (Medical Segmentation Decathlon): ``imagesTr/NAME.nii.gz`` (multi-channel images stay
  4-D), ``labelsTr/NAME.nii.gz``, ``dataset.json`` with ``name``, ``modality`` (``{"0": "MRI"}``),
  ``labels`` (``{"0": "background", ...}`` the schema's values), ``numTraining``, ``numTest`` 0,
  ``training`` (``[{"image": "./imagesTr/NAME.nii.gz", "label": "./labelsTr/NAME.nii.gz"}]``), ``test`` [].
- ``nnunet`` (nnU-Net v2 raw dataset): ``imagesTr/NAME_0000.nii.gz`` (one file per channel,
  ``_0001``...), ``labelsTr/NAME.nii.gz``, ``dataset.json`` with ``channel_names``
  (``{"0": "MRI"}``; ``CT`` for CT, which selects nnU-Net's CT normalisation), ``labels``
  (``{"background": 0, "Anterior": 1, ...}``; value 0 is always named ``background``, and a class
  named ``ignore``, which nnU-Net would take for its ignore label, is written as ``ignore-class``),
  ``numTraining``, ``file_ending`` ``.nii.gz``. nnU-Net needs consecutive label values (0, 1, 2,
  ...): schema values with gaps are renumbered in ascending order and the result says how. The
  folder must still be named ``DatasetNNN_NAME`` under ``nnUNet_raw`` for nnU-Net to find it.

Which revision: ``revision_policy="latest"`` takes each image's latest revision (draft or final),
``"final"`` its latest *final* one (images without one are left out). ``final_only`` leaves out
images whose chosen revision is a draft. Images without any revision are left out, and so are
revisions holding values no longer in the schema (each with its reason in ``skipped``).

Safety: NAMEs are the images' names made file-name safe (``[A-Za-z0-9._-]``, no path separators,
no leading dot; duplicates get ``-2``, ``-3``...). Everything is written into a temporary folder
beside ``out`` and renamed into place at the end, so ``out`` is either the complete dataset or
untouched; a non-empty ``out`` is refused unless ``force`` (then the old content is replaced,
again by renames). ``out`` may not be, hold or lie inside the store's data folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segloop.imaging.nifti import write_nifti
from segloop.imaging.volume import Volume
from segloop.store.base import Datastore
from segloop.store.errors import ValidationError
from segloop.store.records import LabelRevision

Format = Literal["msd", "nnunet"]
Policy = Literal["latest", "final"]
FORMATS = ("msd", "nnunet")
POLICIES = ("latest", "final")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ExportResult:
    out: Path
    format: str
    cases: list[dict[str, Any]] = field(default_factory=list)  # name, image_id, revision, status
    skipped: list[dict[str, Any]] = field(default_factory=list)  # image_id, reason
    label_map: dict[int, int] = field(default_factory=dict)  # schema value -> written value

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "cases": self.cases, "skipped": self.skipped,
                "label_map": {str(k): v for k, v in self.label_map.items()}}


def safe_case_name(name: str, taken: set[str]) -> str:
    """A file-name-safe, unique case name from an image name."""
    base = name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = "-".join(p for p in re.split(r"[/\\]+", base) if p not in ("", ".", ".."))
    base = _SAFE.sub("-", base).strip(".-_")[:100] or "case"
    candidate, n = base, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate.lower())
    return candidate


def _choose(revisions: list[LabelRevision], policy: Policy) -> LabelRevision | None:
    ordered = sorted(revisions, key=lambda r: r.revision)
    if policy == "final":
        finals = [r for r in ordered if r.status == "final"]
        return finals[-1] if finals else None
    return ordered[-1] if ordered else None


def _modality(records_modalities: set[str]) -> str:
    known = {m for m in records_modalities if m and m.lower() not in ("unknown", "ot")}
    if len(known) == 1:
        m = known.pop()
        return "CT" if m.upper() == "CT" else m
    return "image" if not known else "+".join(sorted(known))


def _check_out(out: Path, force: bool, root: Path | None) -> None:
    if root is not None:
        r = root.resolve()
        if out == r or r.is_relative_to(out) or out.is_relative_to(r):
            raise ValidationError(f"{out} is, holds or lies inside the data folder {r}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValidationError(f"{out} is not empty; choose an empty or new folder, or --force to replace its content")


def export_dataset(
    store: Datastore,
    out: Path,
    fmt: Format,
    *,
    final_only: bool = False,
    revision_policy: Policy = "latest",
    force: bool = False,
    name: str = "segloop",
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write the store's labelled images to ``out`` in layout ``fmt`` (see the module docstring).

    Raises:
        ValidationError: bad format or policy, ``out`` not empty (without ``force``), or nothing to export.
    """
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if revision_policy not in POLICIES:
        raise ValidationError(f"revision policy must be one of {', '.join(POLICIES)}, got {revision_policy!r}")
    out = Path(out).expanduser().resolve()
    root = getattr(store, "root", None)
    _check_out(out, force, Path(root) if root is not None else None)
    schema = store.get_schema()
    values = sorted(schema.values)  # the classes' values and 0 (background), always
    label_map = {v: i for i, v in enumerate(values)} if fmt == "nnunet" else {v: v for v in values}
    result = ExportResult(out, fmt, label_map=label_map)
    chosen: list[tuple[Any, LabelRevision]] = []
    for rec in store.list_images():
        rev = _choose(store.list_revisions(rec.id), revision_policy)
        if rev is None:
            has_any = bool(store.list_revisions(rec.id)) if revision_policy == "final" else False
            reason = "no final revision" if has_any else "no label"
            result.skipped.append({"image_id": rec.id, "reason": reason})
        elif final_only and rev.status != "final":
            result.skipped.append({"image_id": rec.id, "reason": f"revision {rev.revision} is a draft"})
        else:
            chosen.append((rec, rev))
    if not chosen:
        raise ValidationError("no labelled image to export (see --revision-policy / --final-only)")
    channels = {rec.channels for rec, _ in chosen}
    if len(channels) != 1:
        raise ValidationError(f"the images have different channel counts ({sorted(channels)}); a dataset needs one")
    n_channels = channels.pop()
    modality = _modality({rec.modality for rec, _ in chosen})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        taken: set[str] = set()
        training = []
        # schema values may exceed 255 (MSD keeps them): uint16 then, and a table big enough
        out_dtype = np.uint8 if max(label_map.values()) <= 255 else np.uint16
        lut = np.zeros(max(values) + 1, dtype=out_dtype)
        for v, w in label_map.items():
            lut[v] = w
        for n, (rec, rev) in enumerate(chosen):
            if progress is not None:
                progress(n, len(chosen))
            label = store.load_label(rec.id, rev.revision)
            lab = np.asarray(label.array)
            if lab.dtype.kind not in "iu":
                lab = lab.astype(np.int64)
            unknown = sorted(set(np.unique(lab).tolist()) - set(values))
            if unknown:
                result.skipped.append({"image_id": rec.id, "reason": f"revision {rev.revision} holds values "
                                       f"{unknown} that are not in the schema"})
                continue
            case = safe_case_name(rec.name, taken)
            image = store.load_image(rec.id)
            lab_vol = Volume(lut[lab], image.affine.copy())  # the image's affine: identical geometry
            if fmt == "nnunet":
                arr = np.asarray(image.array)
                for c in range(n_channels):
                    data = arr if arr.ndim == 3 else arr[..., c]
                    write_nifti(Volume(data, image.affine.copy()), tmp / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            else:
                write_nifti(image, tmp / "imagesTr" / f"{case}.nii.gz")
            write_nifti(lab_vol, tmp / "labelsTr" / f"{case}.nii.gz")
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            result.cases.append({"name": case, "image_id": rec.id, "revision": rev.revision, "status": rev.status})
            if progress is not None:
                progress(n + 1, len(chosen))
        if not training:
            raise ValidationError("no labelled image to export (every chosen revision was skipped)")
        names = {c.value: c.name for c in schema.classes}
        names[0] = "background"
        if fmt == "nnunet":
            meta: dict[str, Any] = {
                "name": name,
                "channel_names": {str(c): modality if n_channels == 1 else f"{modality}_{c}" for c in range(n_channels)},
                "labels": {_nnunet_label_name(names[v]): label_map[v] for v in values},
                "numTraining": len(training),
                "file_ending": ".nii.gz",
                "description": "exported by segloop export-dataset",
            }
        else:
            meta = {
                "name": name,
                "description": "exported by segloop export-dataset",
                "modality": {str(c): modality for c in range(n_channels)},
                "labels": {str(v): names[v] for v in values},
                "numTraining": len(training),
                "numTest": 0,
                "training": training,
                "test": [],
            }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        _check_out(out, force, None)  # again: something may have been written there meanwhile
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _nnunet_label_name(name: str) -> str:
    """nnU-Net reads a label named ``ignore`` as its ignore label (which must be the highest)."""
    return "ignore-class" if name == "ignore" else name


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first, removed after."""
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "content")
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "content", out)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
