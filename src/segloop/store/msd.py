"""Datasets in the Medical Segmentation Decathlon layout: ``imagesTr/``, ``labelsTr/``, ``dataset.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segloop.store.errors import ValidationError
from segloop.store.records import LabelClass, LabelSchema

# A colour-blind-friendly palette (Okabe-Ito, then Tableau) for classes 1, 2, 3, ...
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (148, 103, 189),
    (140, 86, 75),
    (188, 189, 34),
)


def default_color(value: int) -> tuple[int, int, int]:
    return (0, 0, 0) if value == 0 else PALETTE[(value - 1) % len(PALETTE)]


def schema_from_names(names: dict[int, str]) -> LabelSchema:
    """A schema from ``{value: name}``; background (0) is added when missing."""
    classes = {0: "background", **names}
    return LabelSchema(tuple(LabelClass(v, classes[v], default_color(v)) for v in sorted(classes)))


@dataclass(frozen=True)
class MsdDataset:
    root: Path
    name: str
    schema: LabelSchema
    modality: str
    pairs: tuple[tuple[Path, Path | None], ...]  # (image, label or None)


def read_dataset_json(path: Path) -> tuple[str, LabelSchema, str]:
    """Name, label schema and modality of an MSD ``dataset.json``."""
    try:
        meta = json.loads(path.read_text())
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValidationError(f"{path}: not a valid MSD dataset.json ({type(exc).__name__}: {exc})") from exc
    modality = meta.get("modality", {})
    mod = str(next(iter(modality.values()))) if isinstance(modality, dict) and modality else ""
    return str(meta.get("name", path.parent.name)), schema_from_names(labels), mod


def find_dataset_json(labels_dir: Path) -> Path | None:
    """The ``dataset.json`` of an MSD layout that ``labels_dir`` belongs to, if any."""
    for candidate in (labels_dir / "dataset.json", labels_dir.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def open_msd(root: Path, require_labels: bool = True) -> MsdDataset:
    """Read an MSD dataset folder; every image in ``imagesTr`` is paired with ``labelsTr/<same name>``.

    Raises:
        ValidationError: missing folders/dataset.json, or (``require_labels``) images without a label.
    """
    root = Path(root)
    ds_json = root / "dataset.json"
    images_dir = root / "imagesTr"
    labels_dir = root / "labelsTr"
    for needed in (ds_json, images_dir):
        if not needed.exists():
            raise ValidationError(f"{root}: not an MSD dataset folder ({needed.name} is missing)")
    name, schema, modality = read_dataset_json(ds_json)
    images = sorted(p for p in images_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))
    if not images:
        raise ValidationError(f"{images_dir}: no NIfTI images")
    pairs: list[tuple[Path, Path | None]] = []
    missing: list[str] = []
    for img in images:
        lab = labels_dir / img.name
        if lab.is_file():
            pairs.append((img, lab))
        else:
            pairs.append((img, None))
            missing.append(img.name)
    if require_labels and missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValidationError(f"{labels_dir}: no label for {len(missing)} image(s): {shown}")
    return MsdDataset(root, name, schema, modality, tuple(pairs))
