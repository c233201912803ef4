"""Importing images (and their reference labels) into a datastore, all or nothing.

The pipeline: discover the inputs (NIfTI files, folders, DICOM series, zips) → read every image
and every matching label → validate geometry and class values → only then store. Any error in
any input aborts the whole import before the datastore is touched, and every problem is
reported (one line each, naming the file), so a user fixes them all in one go.

DICOM sources keep their instances' headers (pixel data left out) as the image's
``dicom-headers`` attachments (`Datastore.attachments_dir`), and the image metadata records
``sop_instance_uids`` in slice order: what a DICOM SEG export needs to reference the source
instances, so the original files are not needed afterwards. Headers are written to staging
while reading and moved in with one rename once the image is stored (all or nothing).

With ``deidentify`` the headers, the image metadata and the display name follow the DICOM
basic confidentiality profile (`segloop.imaging.deidentify`); the original -> pseudonym
mapping is written only when ``deid_map`` names a file (loaded first when it exists, so that
pseudonyms stay the same across imports).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from segloop.imaging.deidentify import Deidentifier
from segloop.imaging.dicom_series import sanitize_name
from segloop.imaging.discover import ImageSource, discover
from segloop.imaging.errors import GeometryError, ImagingError
from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.store.base import Datastore
from segloop.store.errors import ValidationError
from segloop.store.msd import (
    find_dataset_json,
    group_channels,
    is_channel_layout,
    nifti_stem,
    read_dataset_json,
    read_dataset_meta,
    schema_from_names,
)
from segloop.store.records import ImageRecord, LabelRevision, LabelSchema, LabelStatus

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)`` with stage ``"read"`` or ``"store"``."""


class IngestError(ValueError):
    """An import was refused; ``problems`` holds one line per bad input. Nothing was stored."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        head = self.problems[0] if self.problems else "import failed"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(head + more)


@dataclass(frozen=True)
class ImportedImage:
    record: ImageRecord
    revision: LabelRevision | None


@dataclass
class ImportReport:
    images: list[ImportedImage] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    source: ImageSource
    volume: Volume
    label: Volume | None
    headers: Path | None = None
    name: str = ""


HEADERS_KIND = "dicom-headers"
"""Attachment kind of the source DICOM headers (pixel data removed), one file per instance."""

# Image metadata fields that identify (or date) a patient or study; replaced/removed on de-id.
_IDENTIFYING_META = ("patient_name", "patient_id", "study_date", "series_description", "source_file",
                     "study_description", "accession_number", "institution_name", "patient_birth_date")


def _stage_headers(source: ImageSource, volume: Volume, folder: Path, deid: Deidentifier | None) -> None:
    """Write the source's headers without pixel data into ``folder`` (slice order) and record
    ``sop_instance_uids`` in ``volume.metadata``; with ``deid`` everything is de-identified."""
    folder.mkdir(parents=True)
    uids: list[str] = []
    for n, path in enumerate(source.paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise ImagingError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        if deid is not None:
            deid.apply(ds, where=str(path))
        uids.append(str(ds.get("SOPInstanceUID", "")))
        ds.save_as(folder / f"{n:06d}.dcm", enforce_file_format=False)
    meta = volume.metadata
    meta["sop_instance_uids"] = uids
    if deid is not None:
        for key in ("study_uid", "series_uid", "frame_of_reference_uid"):
            if meta.get(key):
                meta[key] = deid.uid(str(meta[key]))
        pseudonym = deid.patient(str(meta.get("patient_id") or "").strip())
        for key in _IDENTIFYING_META:
            meta.pop(key, None)
        meta["patient_id"] = pseudonym
        meta["deidentified"] = True


def _deidentified_name(volume: Volume) -> str:
    key = str(volume.metadata.get("series_uid") or volume.metadata.get("sop_instance_uids") or "")
    return f"anon-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def dataset_inputs(paths: Sequence[Path], labels_dir: Path | None) -> tuple[list[Path], Path | None]:
    """A dataset folder given as an input (MSD or nnU-Net raw layout: ``dataset.json`` and
    ``imagesTr/``) stands for its images -- ``imagesTr/`` and, unlabelled, ``imagesTs/`` -- with its
    ``labelsTr/`` as the labels unless ``labels_dir`` names others; walked as a plain folder it
    would import its label maps as images.

    Raises:
        IngestError: two dataset folders and no ``labels_dir`` (whose labels?).
    """
    out: list[Path] = []
    roots: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "dataset.json").is_file() and (p / "imagesTr").is_dir():
            roots.append(p)
            out += [d for d in (p / "imagesTr", p / "imagesTs") if d.is_dir()]
        else:
            out.append(p)
    if labels_dir is None and roots:
        if len(roots) > 1:
            raise IngestError([f"{', '.join(map(str, roots))}: several dataset folders; import one at a time "
                               "(or name the labels folder with --labels)"])
        if (roots[0] / "labelsTr").is_dir():
            labels_dir = roots[0] / "labelsTr"
    return out, labels_dir


def channel_sources(sources: Sequence[ImageSource], labels_dir: Path | None) -> list[ImageSource]:
    """Sources with nnU-Net's channel files joined: where the labels' ``dataset.json`` has
    ``channel_names`` (or, nnU-Net v1, every NIfTI is ``NAME_dddd`` and the labels are ``NAME``),
    ``NAME_0000.nii.gz``, ``NAME_0001.nii.gz``, ... become one image ``NAME`` with those channels.
    Elsewhere the sources are returned as they are: file names alone never join images.

    Raises:
        ValidationError: a bad ``dataset.json``, or channel files that do not make whole cases.
    """
    if labels_dir is None:
        return list(sources)
    ds_json = find_dataset_json(Path(labels_dir))
    meta = read_dataset_meta(ds_json) if ds_json is not None else None
    niftis = [src for src in sources if src.kind == "nifti" and len(src.paths) == 1]
    label_stems = [nifti_stem(p.name) for p in Path(labels_dir).iterdir() if p.is_file()]
    if not niftis or not is_channel_layout(meta, [nifti_stem(src.paths[0].name) for src in niftis], label_stems):
        return list(sources)
    expected = len(meta.channel_names) if meta is not None and meta.channel_names else None
    grouped = group_channels([src.paths[0] for src in niftis], expected)
    joined = [ImageSource(sanitize_name(case, max_length=128), "nifti", files) for case, files in grouped.items()]
    return [src for src in sources if src not in niftis] + joined


def _label_candidates(labels_dir: Path, source: ImageSource) -> list[Path]:
    names = [f"{source.name}.nii.gz", f"{source.name}.nii"]
    if source.kind == "nifti" and source.paths:
        names.insert(0, source.paths[0].name)
    return [labels_dir / n for n in names]


def _find_label(labels_dir: Path, source: ImageSource) -> Path | None:
    for candidate in _label_candidates(labels_dir, source):
        if candidate.is_file():
            return candidate
    return None


def _as_label_values(label: Volume, path: Path) -> Volume:
    arr = label.array
    if arr.ndim != 3:
        raise ImagingError(path, f"a label map must be 3-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ImagingError(path, "label values must be whole numbers (class values), found fractions")
        arr = rounded
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ImagingError(path, f"label values must be in 0..65535, found {int(arr.min())}..{int(arr.max())}")
    dtype = np.uint8 if (not arr.size or arr.max() <= 255) else np.uint16
    return label.with_array(arr.astype(dtype, copy=False))


def _resolve_schema(store: Datastore, labels_dir: Path | None, found_values: set[int], report: ImportReport) -> LabelSchema:
    current = store.get_schema()
    unset = not current.foreground
    if labels_dir is not None:
        ds_json = find_dataset_json(labels_dir)
        if ds_json is not None:
            _, schema, _ = read_dataset_json(ds_json)
            if unset:
                report.notes.append(f"label schema taken from {ds_json}: " + ", ".join(f"{c.value}={c.name}" for c in schema.classes))
                return schema
            if {(c.value, c.name.lower()) for c in schema.classes} != {(c.value, c.name.lower()) for c in current.classes}:
                raise ValidationError(
                    f"{ds_json}: its labels {[(c.value, c.name) for c in schema.classes]} differ from the data folder's "
                    f"schema {[(c.value, c.name) for c in current.classes]}"
                )
            return current
    if unset and found_values - {0}:
        schema = schema_from_names({v: f"class_{v}" for v in sorted(found_values - {0})})
        report.notes.append(
            "no label schema yet and no dataset.json: classes named "
            + ", ".join(f"{c.value}={c.name}" for c in schema.foreground)
            + " (rename them with the schema API)"
        )
        return schema
    return current


def import_paths(
    store: Datastore,
    paths: Sequence[Path],
    *,
    labels_dir: Path | None = None,
    author: str = "import",
    draft: bool = False,
    modality: str | None = None,
    progress: Progress | None = None,
    deidentify: bool = False,
    deid_map: Path | None = None,
) -> ImportReport:
    """Import images from ``paths`` (and labels from ``labels_dir``, matched by file name; a
    dataset folder among ``paths`` brings its own labels, `dataset_inputs`).

    Labels become the first revision of their image (source ``manual``, status final unless
    ``draft``). All inputs are read and validated before anything is stored. DICOM headers
    are kept as attachments (see the module doc); ``deidentify``/``deid_map`` as described there.

    Raises:
        IngestError: one or more inputs are bad (``problems`` lists them all); nothing stored.
    """
    report = ImportReport()
    problems: list[str] = []
    paths, labels_dir = dataset_inputs(paths, labels_dir)
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise IngestError([f"{labels_dir}: labels folder does not exist"])
    if deid_map is not None and not deidentify:
        raise IngestError([f"{deid_map}: a de-identification map needs --deidentify"])
    deid: Deidentifier | None = None
    if deidentify:
        mapping: dict[str, dict[str, str]] | None = None
        if deid_map is not None and Path(deid_map).is_file():
            try:
                mapping = json.loads(Path(deid_map).read_text())
            except (OSError, ValueError) as exc:
                raise IngestError([f"{deid_map}: unreadable de-identification map ({exc})"]) from exc
        deid = Deidentifier(mapping)
    workdir = Path(tempfile.mkdtemp(prefix="import-", dir=store.staging_dir()))
    try:
        header_root = Path(tempfile.mkdtemp(prefix="headers-", dir=workdir))
        found = discover([Path(p) for p in paths], workdir)
        problems.extend(str(e) for e in found.errors)
        report.skipped.extend(found.skipped)
        sources = list(found.sources)
        try:
            sources = channel_sources(sources, labels_dir)
        except ValidationError as exc:
            problems.append(str(exc))
        if not sources and not problems:
            problems.append(f"{', '.join(str(p) for p in paths)}: no images found")
        pending: list[_Pending] = []
        values: set[int] = set()
        total = len(sources)
        for n, source in enumerate(sources, 1):
            try:
                volume = source.read()
                label: Volume | None = None
                if labels_dir is not None:
                    label_path = _find_label(Path(labels_dir), source)
                    if label_path is None:
                        report.notes.append(f"{source.name}: no label in {labels_dir}; imported unlabelled")
                    else:
                        label = _as_label_values(read_nifti(label_path), label_path)
                        try:
                            volume.check_same_grid(label, what=f"label {label_path.name}", of=f"image {source.name}")
                        except GeometryError as exc:
                            raise ImagingError(label_path, str(exc)) from exc
                        values.update(int(v) for v in np.unique(label.array))
                item = _Pending(source, volume, label, name=source.name)
                if source.kind == "dicom":
                    item.headers = header_root / f"{n:06d}"
                    _stage_headers(source, volume, item.headers, deid)
                    if deid is not None:
                        item.name = _deidentified_name(volume)
                pending.append(item)
            except ImagingError as exc:
                problems.append(str(exc))
            if progress:
                progress("read", n, total)
        if problems:
            raise IngestError(problems)

        schema = _resolve_schema(store, labels_dir, values, report)
        if modality is None and labels_dir is not None:
            ds_json = find_dataset_json(Path(labels_dir))
            if ds_json is not None:
                modality = read_dataset_json(ds_json)[2] or None
        unknown = values - schema.values
        if unknown:
            raise IngestError(
                [f"{labels_dir}: label values {sorted(unknown)} are not in the label schema {sorted(schema.values)}"]
            )
        if schema != store.get_schema():
            store.set_schema(schema)

        status: LabelStatus = "draft" if draft else "final"
        added: list[str] = []
        try:
            for n, item in enumerate(pending, 1):
                mod = modality or str(item.volume.metadata.get("modality") or "")
                # Keep the file name, not where it was read from: import folders and upload
                # staging paths are nobody's business once the image is in the datastore.
                src = item.volume.metadata.pop("source_path", None)
                if src and deid is None:
                    item.volume.metadata["source_file"] = Path(str(src)).name
                text = _source_text(item.source, item.volume) if deid is None else f"dicom:{item.name}"
                if deid is not None and item.source.kind != "dicom":
                    text = f"file:{item.name}"
                record = store.add_image(item.volume, name=item.name, source=text, modality=mod or None)
                added.append(record.id)
                if item.headers is not None:
                    store.attach(record.id, HEADERS_KIND, item.headers)
                revision = None
                if item.label is not None:
                    revision = store.save_label(record.id, item.label.array, author=author, source="manual", status=status)
                    record = store.get_image(record.id)
                report.images.append(ImportedImage(record, revision))
                if progress:
                    progress("store", n, len(pending))
        except BaseException:
            for image_id in added:  # all or nothing
                store.delete_image(image_id)
            raise
        if deid is not None and deid_map is not None:
            _write_map(Path(deid_map), deid.mapping)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _write_map(path: Path, mapping: dict[str, dict[str, str]]) -> None:
    """Write the mapping atomically, readable by its owner only (it re-identifies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(mapping, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _source_text(source: ImageSource, volume: Volume) -> str:
    """Where the image came from, without temporary extraction paths."""
    if source.kind == "dicom":
        uid = volume.metadata.get("series_uid") or ""
        return f"dicom:{uid}" if uid else f"dicom:{source.name}"
    return f"file:{source.paths[0].name if source.paths else source.name}"
