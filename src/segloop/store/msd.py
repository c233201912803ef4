"""Labelled datasets on disk: the Medical Segmentation Decathlon layout and nnU-Net's raw layout.

Both have ``imagesTr/``, ``labelsTr/`` (``NAME.nii.gz``, one class per value) and a ``dataset.json``:

- **MSD**: ``imagesTr/NAME.nii.gz`` (3-D, or 4-D with the channels last); ``dataset.json`` maps
  values to names (``"labels": {"0": "background", "1": "liver"}``) and channels to modalities
  (``"modality": {"0": "CT"}``).
- **nnU-Net** (v2's raw layout; v1 named files the same way): one file per channel,
  ``imagesTr/NAME_0000.nii.gz``, ``NAME_0001.nii.gz``, ...; v2's ``dataset.json`` maps names to
  values (``"labels": {"background": 0, "liver": 1}``) and has ``"channel_names"`` and
  ``"file_ending"``. Region-based labels (a name mapped to a list of values) and the ``ignore``
  label (voxels nobody annotated) are refused: here a label value is one class, and labels are
  dense. Only NIfTI files are read (``file_ending`` ``.nii.gz`` or ``.nii``).

The layout is told by ``dataset.json`` (``channel_names`` means nnU-Net), or, for v1, by the
names: every image is ``NAME_dddd`` and the labels are named ``NAME``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: NAME_0000 is channel 0 of NAME
NIFTI_ENDINGS = (".nii.gz", ".nii")

Layout = Literal["msd", "nnunet"]


def nifti_stem(name: str) -> str:
    """A NIfTI file name without ``.nii.gz``/``.nii``."""
    for suffix in NIFTI_ENDINGS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class DatasetMeta:
    """What a ``dataset.json`` says: its name, classes, the first channel's modality, and the
    channel names where nnU-Net's ``channel_names`` gives them (then the layout is nnU-Net's)."""

    name: str
    schema: LabelSchema
    modality: str
    channel_names: tuple[str, ...] = ()
    file_ending: str | None = None


def _labels(path: Path, raw: Any) -> dict[int, str]:
    """``{value: name}`` from MSD's ``{"1": "liver"}`` or nnU-Net v2's ``{"liver": 1}``."""
    if not isinstance(raw, dict) or not raw:
        raise ValidationError(f"{path}: 'labels' must be a non-empty object")
    if all(isinstance(k, str) and k.strip().lstrip("-").isdigit() for k in raw):
        return {int(k): str(v) for k, v in raw.items()}
    regions = sorted(str(k) for k, v in raw.items() if isinstance(v, (list, tuple)))
    if regions:
        raise ValidationError(
            f"{path}: region-based labels ({', '.join(regions)} map to lists of values) are not supported: "
            "a label value must be one class; give each class its own value"
        )
    bad = sorted(str(k) for k, v in raw.items() if isinstance(v, bool) or not isinstance(v, int))
    if bad:
        raise ValidationError(f"{path}: 'labels' must map values to names (MSD) or names to integer values (nnU-Net); "
                              f"{', '.join(bad)} is neither")
    if "ignore" in raw:
        raise ValidationError(
            f"{path}: nnU-Net's 'ignore' label (value {raw['ignore']}) marks voxels nobody annotated; segloop trains on "
            "dense labels and would learn it as a class -- give those voxels a class, or drop the label"
        )
    by_value: dict[int, str] = {}
    for name, value in raw.items():
        if value in by_value:
            raise ValidationError(f"{path}: labels {by_value[value]!r} and {name!r} have the same value {value}")
        by_value[int(value)] = str(name)
    return by_value


def read_dataset_meta(path: Path) -> DatasetMeta:
    """Read an MSD or nnU-Net ``dataset.json``.

    Raises:
        ValidationError: unreadable JSON, no usable ``labels``, region-based labels, a file ending
            other than NIfTI's.
    """
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"expected an object, got {type(meta).__name__}")
        raw_labels = meta["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"{path}: not a valid dataset.json (MSD or nnU-Net; {type(exc).__name__}: {exc})") from exc
    labels = _labels(path, raw_labels)
    channels = meta.get("channel_names") or {}
    modality_map = meta.get("modality") or channels
    mod = ""
    if isinstance(modality_map, dict) and modality_map:
        first = min(modality_map, key=lambda k: int(k) if str(k).isdigit() else 1 << 30)
        mod = str(modality_map[first])
    names: tuple[str, ...] = ()
    if isinstance(channels, dict) and channels:
        try:
            order = sorted(channels, key=int)
        except ValueError as exc:
            raise ValidationError(f"{path}: 'channel_names' keys must be channel numbers, got {sorted(channels)}") from exc
        if [int(k) for k in order] != list(range(len(order))):
            raise ValidationError(f"{path}: 'channel_names' must number the channels 0, 1, ..., got {order}")
        names = tuple(str(channels[k]) for k in order)
    ending = meta.get("file_ending")
    if ending is not None and str(ending).lower() not in NIFTI_ENDINGS:
        raise ValidationError(f"{path}: file_ending {ending!r} is not supported; segloop reads NIfTI datasets "
                              "(.nii.gz, .nii) -- convert the images and labels first")
    return DatasetMeta(str(meta.get("name", path.parent.name)), schema_from_names(labels), mod, names,
                       None if ending is None else str(ending))


def read_dataset_json(path: Path) -> tuple[str, LabelSchema, str]:
    """Name, label schema and modality of an MSD or nnU-Net ``dataset.json``."""
    meta = read_dataset_meta(path)
    return meta.name, meta.schema, meta.modality


def find_dataset_json(labels_dir: Path) -> Path | None:
    """The ``dataset.json`` of an MSD layout that ``labels_dir`` belongs to, if any."""
    for candidate in (labels_dir / "dataset.json", labels_dir.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def is_channel_layout(meta: DatasetMeta | None, image_stems: Iterable[str], label_stems: Iterable[str]) -> bool:
    """Whether images are stored one file per channel (nnU-Net): ``channel_names`` in the
    ``dataset.json``, or (nnU-Net v1) every image named ``NAME_dddd`` with no label of that name
    and labels named ``NAME``."""
    if meta is not None and meta.channel_names:
        return True
    stems, labels = list(image_stems), set(label_stems)
    matches = [CHANNEL_FILE.match(s) for s in stems]
    if not stems or not all(matches) or labels & set(stems):
        return False
    return any(m is not None and m["case"] in labels for m in matches)


def group_channels(files: Sequence[Path], channels: int | None = None) -> dict[str, tuple[Path, ...]]:
    """nnU-Net's channel files grouped per case: ``{NAME: (NAME_0000, NAME_0001, ...)}``.

    Args:
        files: the image files (NIfTI), each named ``NAME_dddd``.
        channels: how many each case must have (``dataset.json``'s ``channel_names``), or ``None``:
            as many as the first case, the same for all.

    Raises:
        ValidationError: a file not named ``NAME_dddd``, a case whose channels are not 0..n-1, or
            cases with different channel counts.
    """
    found: dict[str, dict[int, Path]] = {}
    for f in files:
        m = CHANNEL_FILE.match(nifti_stem(f.name))
        if m is None:
            raise ValidationError(f"{f}: nnU-Net layout: an image file must be named CASE_0000{f.name[len(nifti_stem(f.name)):]}"
                                  " (its case, then its 4-digit channel number)")
        found.setdefault(m["case"], {})[int(m["channel"])] = f
    cases: dict[str, tuple[Path, ...]] = {}
    for case in sorted(found):
        chans = found[case]
        want = channels if channels is not None else len(chans)
        if sorted(chans) != list(range(want)):
            have = ", ".join(f"{c:04d}" for c in sorted(chans))
            raise ValidationError(f"case {case!r}: nnU-Net layout needs channel files _0000 .. _{want - 1:04d}, found {have}")
        if channels is None:
            channels = want
        cases[case] = tuple(chans[c] for c in range(want))
    return cases


@dataclass(frozen=True)
class DatasetCase:
    """One case: its name, its image file(s) (one per channel in nnU-Net's layout) and its label."""

    name: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class MsdDataset:
    root: Path
    name: str
    schema: LabelSchema
    modality: str
    cases: tuple[DatasetCase, ...]
    layout: Layout = "msd"


def open_msd(root: Path, require_labels: bool = True) -> MsdDataset:
    """Read a dataset folder in the MSD or nnU-Net raw layout (the module doc); every case's
    label is ``labelsTr/<case>.nii.gz`` (or ``.nii``).

    Raises:
        ValidationError: missing folders/dataset.json, a bad dataset.json, channel files that do not
            make whole cases, or (``require_labels``) images without a label.
    """
    root = Path(root)
    ds_json = root / "dataset.json"
    images_dir = root / "imagesTr"
    labels_dir = root / "labelsTr"
    for needed in (ds_json, images_dir):
        if not needed.exists():
            raise ValidationError(f"{root}: not an MSD dataset folder ({needed.name} is missing)")
    meta = read_dataset_meta(ds_json)
    images = sorted(p for p in images_dir.iterdir() if p.name.lower().endswith(NIFTI_ENDINGS) and not p.name.startswith("."))
    if not images:
        raise ValidationError(f"{images_dir}: no NIfTI images")
    label_files = ({nifti_stem(p.name): p for p in labels_dir.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_ENDINGS)
                    and not p.name.startswith(".")} if labels_dir.is_dir() else {})
    layout: Layout = "msd"
    if is_channel_layout(meta, (nifti_stem(p.name) for p in images), label_files):
        layout = "nnunet"
        grouped = group_channels(images, len(meta.channel_names) or None)
    else:
        grouped = {nifti_stem(p.name): (p,) for p in images}
    cases: list[DatasetCase] = []
    missing: list[str] = []
    for name, files in grouped.items():
        lab = label_files.get(name)
        if lab is None:
            missing.append(f"{name}.nii.gz" if layout == "nnunet" else files[0].name)
        cases.append(DatasetCase(name, files, lab))
    if require_labels and missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValidationError(f"{labels_dir}: no label for {len(missing)} image(s): {shown}")
    return MsdDataset(root, meta.name, meta.schema, meta.modality, tuple(cases), layout)
