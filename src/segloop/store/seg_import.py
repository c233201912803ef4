"""DICOM SEG in and out of a datastore.

Import (`import_dicom_seg`)
---------------------------
A SEG that references an image already in the datastore becomes a new label revision of that
image (source ``import:dicom-seg``, appended on top of the latest revision). The image is found
by the SeriesInstanceUID the SEG references, matched against the images' metadata
``series_uid`` (set when a DICOM series is imported). The SEG's frames are placed on the
image's grid by geometry (`segloop.imaging.dicom_seg.read_dicom_seg`; overlaps: the highest
segment number wins, and what that dropped is reported per (kept, dropped) segment pair:
`SegImport.overlap_report`).

Segments map to label-schema classes **by name** (case-insensitive). When the schema has no
foreground class yet, it is created from the segments (value = segment number, the SEG's name
and colour). Segments whose name is not in a non-empty schema are refused (`ValidationError`
naming them) unless ``extend_schema=True``, which appends them with the next free values.
Everything is checked before anything is stored; a failed save restores the previous schema.

Export (`export_dicom_seg`)
---------------------------
The SEG's references (SOP instance UIDs, patient and study modules) come from the source
instances' headers, which the datastore keeps with every image imported from DICOM (files or
DICOMweb: the image's ``dicom-headers`` attachments). A folder of source DICOM files may be
given instead (only their headers are read), e.g. for images imported before headers were
kept. The label is mapped to those instances by geometry; headers whose series does not match
the image's grid are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from segloop.imaging.dicom_seg import (
    SegmentInfo,
    SegmentOverlap,
    read_dicom_seg,
    seg_referenced_series,
    stable_seg_uids,
    write_dicom_seg,
)
from segloop.imaging.errors import ImagingError
from segloop.store.base import Datastore
from segloop.store.errors import ValidationError
from segloop.store.ingest import HEADERS_KIND
from segloop.store.records import ImageRecord, LabelClass, LabelRevision, LabelSchema, LabelStatus

SEG_SOURCE = "import:dicom-seg"


@dataclass
class SegImport:
    """What `import_dicom_seg` stored.

    Attributes:
        image: the image the SEG was attached to.
        revision: the new label revision.
        value_of_segment: segment number -> label value used.
        overlap_voxels: voxels covered by several segments (highest segment number kept).
        schema_changed: the label schema was created or extended.
        overlaps: what the flattening dropped, per (kept, dropped) segment pair (`overlap_report`).
    """

    image: ImageRecord
    revision: LabelRevision
    value_of_segment: dict[int, int]
    overlap_voxels: int
    segments: list[SegmentInfo]
    schema_changed: bool
    notes: list[str] = field(default_factory=list)
    overlaps: list[SegmentOverlap] = field(default_factory=list)

    def overlap_report(self) -> list[dict[str, Any]]:
        """Per (kept, dropped) segment pair: the segments' numbers and labels, the label values
        they became, and the voxels of ``dropped`` that ``kept`` took."""
        names = {s.number: s.label for s in self.segments}
        out = []
        for o in self.overlaps:
            item = o.to_dict(names)
            item.update(kept_value=self.value_of_segment.get(o.kept), dropped_value=self.value_of_segment.get(o.dropped))
            out.append(item)
        return out

    def overlap_lines(self) -> list[str]:
        """The same, one readable line per pair."""
        names = {s.number: s.label for s in self.segments}
        return [o.describe(names) for o in self.overlaps]


def find_image_for_series(store: Datastore, series_uids: set[str]) -> ImageRecord | None:
    """The datastore image whose metadata ``series_uid`` is one of ``series_uids`` (first by id).
    Stores that can look a series up directly (``image_for_series``, e.g. DICOMweb) are asked."""
    lookup = getattr(store, "image_for_series", None)
    if callable(lookup):
        found: ImageRecord | None = lookup(set(series_uids))
        return found
    for record in store.list_images():
        if str(record.metadata.get("series_uid") or "") in series_uids:
            return record
    return None


def _schema_for(
    schema: LabelSchema, segments: list[SegmentInfo], extend: bool, seg_uid: str
) -> tuple[LabelSchema, dict[int, int]]:
    if not schema.foreground:
        classes = [LabelClass(0, "background", (0, 0, 0))]
        names: set[str] = set()
        for s in segments:
            name = s.label.strip() or f"segment_{s.number}"
            if name.lower() in names:
                raise ValidationError(f"SEG {seg_uid} has two segments named {name!r}")
            names.add(name.lower())
            classes.append(LabelClass(s.number, name, s.color or (255, 0, 0)))
        bg = next((c for c in schema.classes if c.value == 0), None)
        if bg is not None:
            classes[0] = bg
        return LabelSchema(tuple(classes)), {s.number: s.number for s in segments}
    mapping: dict[int, int] = {}
    unknown: list[SegmentInfo] = []
    for s in segments:
        try:
            mapping[s.number] = schema.by_name(s.label.strip()).value
        except KeyError:
            unknown.append(s)
    if not unknown:
        return schema, mapping
    if not extend:
        raise ValidationError(
            f"SEG {seg_uid} segments {[s.label for s in unknown]} are not classes of the label schema "
            f"{[c.name for c in schema.foreground]}; rename them or import with --extend-schema (extend_schema=True) to add them"
        )
    classes = list(schema.classes)
    next_value = max(c.value for c in classes) + 1
    for s in unknown:
        classes.append(
            LabelClass(next_value, s.label.strip() or f"segment_{s.number}", s.color or (255, 0, 0))
        )
        mapping[s.number] = next_value
        next_value += 1
    return LabelSchema(tuple(classes)), mapping


def import_dicom_seg(
    store: Datastore,
    seg_path: Path | str,
    *,
    author: str = "import",
    status: LabelStatus = "final",
    image_id: str | None = None,
    extend_schema: bool = False,
    on_overlap: Literal["last", "error"] = "last",
) -> SegImport:
    """Import a DICOM SEG as a new label revision of the image whose series it references.

    Raises:
        ImagingError: unreadable SEG; no image in the datastore for the series it references;
            the SEG's geometry does not fit the image (messages name the UIDs).
        ValidationError: segments that are not schema classes (without ``extend_schema``).
        ConflictError: another revision was saved concurrently.
    """
    seg_path = Path(seg_path)
    try:
        header = pydicom.dcmread(seg_path, stop_before_pixels=True)
    except Exception as exc:
        raise ImagingError(seg_path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    seg_uid = str(header.get("SOPInstanceUID", ""))
    refs = seg_referenced_series(header)
    if image_id is not None:
        record = store.get_image(image_id)
    else:
        found = find_image_for_series(store, refs)
        if found is None:
            raise ImagingError(
                seg_path,
                f"SEG {seg_uid} references series {', '.join(sorted(refs)) or '(none)'}, "
                "which is not in the datastore; import that series first",
            )
        record = found
    image = store.load_image(record.id)
    result = read_dicom_seg(seg_path, image, on_overlap=on_overlap)
    present = [s for s in result.segments if s.voxels > 0]
    old_schema = store.get_schema()
    schema, mapping = _schema_for(old_schema, present or result.segments, extend_schema, seg_uid)
    lut = np.zeros(max(s.number for s in result.segments) + 1, dtype=np.uint16)
    for number, value in mapping.items():
        lut[number] = value
    label = lut[result.label.array]
    label = label.astype(np.uint8 if label.max(initial=0) <= 255 else np.uint16)
    changed = schema != old_schema
    if changed:
        store.set_schema(schema)
    try:
        revision = store.save_label(
            record.id,
            label,
            author=author,
            source=SEG_SOURCE,
            status=status,
            base_revision=record.latest_revision,
        )
    except BaseException:
        if changed:
            store.set_schema(old_schema)
        raise
    notes = list(result.notes)
    if changed:
        notes.append(
            "label schema " + ("created" if not old_schema.foreground else "extended") + " from the SEG"
        )
    return SegImport(
        store.get_image(record.id), revision, mapping, result.overlap_voxels, result.segments, changed, notes,
        result.overlaps,
    )


_MODEL_SOURCE = re.compile(r"^model:(?P<name>[^@]+)@(?P<version>.+)$")


def export_dicom_seg(
    store: Datastore,
    image_id: str,
    revision: int | None,
    source_dicom_dir: Path | str | None,
    out_path: Path | str,
    *,
    series_description: str | None = None,
) -> tuple[Dataset, list[SegmentInfo]]:
    """Write label revision ``revision`` (latest when ``None``) of ``image_id`` as a DICOM SEG.

    Args:
        source_dicom_dir: folder (or file) holding the image's source DICOM series; other
            series and non-image objects there are ignored. ``None``: the headers the
            datastore kept when the image was imported.
        out_path: the SEG file to write (atomically).

    Raises:
        ValidationError: the image did not come from DICOM (no ``series_uid``).
        ImagingError: the source series is missing from the folder or does not match the grid.
        NotFoundError: no such image or revision.
    """
    record = store.get_image(image_id)
    series_uid = str(record.metadata.get("series_uid") or "")
    if not series_uid:
        from_dicom = str(record.source).startswith(("dicom:", "dicomweb:")) or str(record.metadata.get("format")) == "dicom"
        if from_dicom:
            raise ValidationError(
                f"image {image_id!r} comes from a DICOM series whose SeriesInstanceUID is blank (as in heavily "
                "de-identified data; segloop import --deidentify replaces UIDs but leaves blank ones blank): a DICOM "
                "SEG references its source series and images by their UIDs, so none can be made for it; export the "
                "label as NIfTI or NRRD instead"
            )
        raise ValidationError(
            f"image {image_id!r} has no DICOM series_uid (not imported from DICOM); cannot make a SEG"
        )
    if source_dicom_dir is None:
        source_dicom_dir = stored_headers(store, image_id)
    rev = store.get_revision(image_id, revision)
    label = store.load_label(image_id, rev.revision)
    label.metadata["series_uid"] = series_uid
    classes = [(c.value, c.name, c.color) for c in store.get_schema().foreground]
    algorithm = None
    m = _MODEL_SOURCE.match(rev.source)
    if m:
        algorithm = (m.group("name"), m.group("version"))
    description = series_description or f"segloop {record.name} r{rev.revision}"
    return write_dicom_seg(
        label,
        classes,
        Path(source_dicom_dir),
        out_path,
        series_uid=series_uid,
        series_description=description,
        algorithm=algorithm,
        uids=stable_seg_uids(series_uid, image_id, rev.revision, rev.created_at.isoformat()),
    )


def stored_headers(store: Datastore, image_id: str) -> Path:
    """The folder of the image's source DICOM headers kept by the datastore.

    Raises:
        ValidationError: the image has none (not from DICOM, or imported before headers were kept).
    """
    folder = store.attachments_dir(image_id, HEADERS_KIND)
    if not folder.is_dir() or not any(folder.iterdir()):
        record = store.get_image(image_id)
        why = "it was not imported from DICOM" if not record.metadata.get("series_uid") else (
            "it was imported before segloop kept DICOM headers; give the source DICOM folder"
        )
        raise ValidationError(f"image {image_id!r} has no stored DICOM headers: {why}")
    return folder
