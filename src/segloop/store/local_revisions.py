"""Label revisions of the local datastore: append-only saves on top of the latest revision
(a save based on an older one is refused with `ConflictError`, HTTP 409), final revisions, and
the checks a label map passes before it is saved (the image's grid, the schema's values)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
from sqlalchemy import CursorResult, and_, func, select, update

from segloop.imaging.errors import GeometryError
from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.store.errors import ConflictError, NotFoundError, ValidationError
from segloop.store.local_images import LocalImages
from segloop.store.local_schema import MAX_LABEL_VALUE, LocalSchema
from segloop.store.names import _check_text
from segloop.store.records import ImageRecord, LabelRevision, LabelSchema, LabelStatus
from segloop.store.sql import ImageRow, LabelRevisionRow, utcnow

_LABEL_STATUSES: tuple[str, ...] = get_args(LabelStatus)
_COUNT_CHUNK = 1 << 22  # voxels per bincount chunk (bounded memory on large volumes)


class LocalRevisions(LocalImages, LocalSchema):
    """Revisions are saved on images (`LocalImages`) and checked against the schema (`LocalSchema`)."""

    def save_label(
        self,
        image_id: str,
        label: Volume | np.ndarray,
        *,
        author: str,
        source: str = "manual",
        status: LabelStatus = "draft",
        base_revision: int | None = None,
    ) -> LabelRevision:
        """Append a revision on top of ``base_revision`` (which must be the latest one).

        Raises:
            NotFoundError: no such image.
            ConflictError: ``base_revision`` is not the latest revision (``current`` is).
            ValidationError: the label is not on the image's grid or has values outside the schema.
        """
        author = _check_text(author, "author", 256)
        source = _check_text(source, "label source", 256)
        if status not in _LABEL_STATUSES:
            raise ValidationError(f"label status must be one of {list(_LABEL_STATUSES)}, got {status!r}")
        if base_revision is not None and (
            isinstance(base_revision, bool)
            or not isinstance(base_revision, (int, np.integer))
            or base_revision < 1
        ):
            raise ValidationError(
                f"base_revision must be a revision number >= 1 or None, got {base_revision!r}"
            )
        base = None if base_revision is None else int(base_revision)

        image = self.get_image(image_id)
        if base != image.latest_revision:
            raise _conflict(image_id, base, image.latest_revision)
        data, counts = _prepare_label(image, label, self.get_schema())

        revision = (image.latest_revision or 0) + 1
        rel = f"labels/{image.id}/r{revision:06d}-{secrets.token_hex(6)}.nii.gz"
        dest = self._abs(rel)
        self._write_nifti_into(data, np.array(image.affine, dtype=np.float64), dest)
        now = utcnow()
        try:
            row = LabelRevisionRow(
                image_id=image.id,
                revision=revision,
                parent=base,
                author=author,
                source=source,
                status=status,
                created_at=now,
                path=rel,
                dtype=str(data.dtype),
                voxel_counts={str(k): v for k, v in counts.items()},
                finalized_by=author if status == "final" else None,
                finalized_at=now if status == "final" else None,
            )
            self._commit_revision(row, base)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return _revision_record(row, self.root)

    def _commit_revision(self, row: LabelRevisionRow, base: int | None) -> None:
        """Insert ``row`` if the image's latest revision is still ``base`` (compare-and-set)."""
        with self._write() as s:
            latest = ImageRow.latest_revision.is_(None) if base is None else ImageRow.latest_revision == base
            result = cast(
                CursorResult[Any],
                s.execute(
                    update(ImageRow)
                    .where(ImageRow.id == row.image_id, latest)
                    .values(latest_revision=row.revision, label_state=row.status, latest_author=row.author),
                    execution_options={"synchronize_session": False},
                ),
            )
            if result.rowcount != 1:
                current = self._image_row(s, row.image_id).latest_revision
                raise _conflict(row.image_id, base, current)
            s.add(row)

    def list_revisions(self, image_id: str) -> list[LabelRevision]:
        with self._read() as s:
            self._image_row(s, image_id)
            rows = s.scalars(
                select(LabelRevisionRow)
                .where(LabelRevisionRow.image_id == image_id)
                .order_by(LabelRevisionRow.revision)
            ).all()
            return [_revision_record(r, self.root) for r in rows]

    def get_revision(self, image_id: str, revision: int | None = None) -> LabelRevision:
        """The given revision, or the latest one."""
        with self._read() as s:
            image = self._image_row(s, image_id)
            number = image.latest_revision if revision is None else revision
            if number is None:
                raise NotFoundError(f"image {image_id!r} has no label revision")
            row = s.scalars(
                select(LabelRevisionRow).where(
                    LabelRevisionRow.image_id == image_id, LabelRevisionRow.revision == number
                )
            ).first()
            if row is None:
                raise NotFoundError(f"image {image_id!r} has no label revision {number}")
            return _revision_record(row, self.root)

    def load_label(self, image_id: str, revision: int | None = None) -> Volume:
        """The label map (uint8 or uint16) on the image's grid."""
        rev = self.get_revision(image_id, revision)
        image = self.get_image(image_id)
        vol = read_nifti(rev.path)
        meta = {"image_id": image_id, "revision": rev.revision, "author": rev.author, "status": rev.status}
        return Volume(vol.array, np.array(image.affine, dtype=np.float64), meta)

    def mark_final(self, image_id: str, revision: int, *, author: str) -> LabelRevision:
        """Mark a revision final (its data never change). Already final: returned unchanged."""
        author = _check_text(author, "author", 256)
        with self._write() as s:
            self._image_row(s, image_id)
            row = s.scalars(
                select(LabelRevisionRow).where(
                    LabelRevisionRow.image_id == image_id, LabelRevisionRow.revision == revision
                )
            ).first()
            if row is None:
                raise NotFoundError(f"image {image_id!r} has no label revision {revision}")
            if row.status != "final":
                row.status = "final"
                row.finalized_by = author
                row.finalized_at = utcnow()
                s.execute(
                    update(ImageRow)
                    .where(ImageRow.id == image_id, ImageRow.latest_revision == revision)
                    .values(label_state="final"),
                    execution_options={"synchronize_session": False},
                )
            s.flush()
            return _revision_record(row, self.root)

    def final_labels(self) -> list[LabelRevision]:
        """For each image with a final revision, its latest final one (images in added order)."""
        latest = (
            select(LabelRevisionRow.image_id, func.max(LabelRevisionRow.revision).label("revision"))
            .where(LabelRevisionRow.status == "final")
            .group_by(LabelRevisionRow.image_id)
            .subquery()
        )
        query = (
            select(LabelRevisionRow)
            .join(
                latest,
                and_(
                    LabelRevisionRow.image_id == latest.c.image_id,
                    LabelRevisionRow.revision == latest.c.revision,
                ),
            )
            .join(ImageRow, ImageRow.id == LabelRevisionRow.image_id)
            .order_by(ImageRow.created_at, ImageRow.id)
        )
        with self._read() as s:
            return [_revision_record(r, self.root) for r in s.scalars(query).all()]


def _conflict(image_id: str, base: int | None, current: int | None) -> ConflictError:
    if current is None:
        msg = f"image {image_id!r} has no label revision yet; save with base_revision=None (got {base})"
    elif base is None:
        msg = f"image {image_id!r} already has revision {current}; save with base_revision={current}"
    else:
        msg = f"base revision {base} of image {image_id!r} is stale; the latest revision is {current}"
    return ConflictError(msg, current)


def _prepare_label(
    image: ImageRecord, label: Volume | np.ndarray, schema: LabelSchema
) -> tuple[np.ndarray, dict[int, int]]:
    """Check ``label`` against the image's grid and the schema; return it as uint8/uint16 and
    the voxel count of every schema class."""
    affine = np.array(image.affine, dtype=np.float64)
    if isinstance(label, Volume):
        grid = Volume(np.broadcast_to(np.uint8(0), image.shape), affine)
        try:
            grid.check_same_grid(label, what="label", of=f"image {image.id!r}")
        except GeometryError as exc:
            raise ValidationError(str(exc)) from exc
        array = np.asarray(label.array)
    elif isinstance(label, np.ndarray):
        array = label
    else:
        raise ValidationError(f"label must be a Volume or a numpy array, got {type(label).__name__}")
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or tuple(array.shape) != tuple(image.shape):
        raise ValidationError(
            f"label shape {tuple(array.shape)} does not match image {image.id!r} shape {tuple(image.shape)}"
        )
    kind = array.dtype.kind
    if kind == "b":
        array = array.astype(np.uint8)
    elif kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValidationError("label has NaN or infinite values")
        fractional = array != np.floor(array)
        if fractional.any():
            examples = np.unique(array[fractional])[:10].tolist()
            raise ValidationError(f"label values must be integers, got {examples}")
    elif kind not in "iu":
        raise ValidationError(f"label dtype {array.dtype} is not an integer type")

    lo, hi = array.min(), array.max()
    known = sorted(schema.values)
    if lo < 0 or hi > MAX_LABEL_VALUE:
        present = np.unique(array)
        unknown = [v for v in present.tolist() if v not in schema.values]
        raise ValidationError(f"label values {_fmt_values(unknown)} are not in the label schema {known}")
    out = array.astype(np.uint8 if hi <= 255 else np.uint16, copy=False)
    flat = out.reshape(-1)
    counts = np.zeros(int(hi) + 1, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=counts.size)
    unknown = [int(v) for v in np.flatnonzero(counts) if int(v) not in schema.values]
    if unknown:
        raise ValidationError(f"label values {_fmt_values(unknown)} are not in the label schema {known}")
    return np.ascontiguousarray(out), {v: int(counts[v]) if v < counts.size else 0 for v in known}


def _fmt_values(values: list[Any]) -> str:
    shown = [int(v) if float(v).is_integer() else v for v in values[:20]]
    return f"{shown}{' ...' if len(values) > 20 else ''}"


def _revision_record(row: LabelRevisionRow, root: Path) -> LabelRevision:
    return LabelRevision(
        image_id=row.image_id,
        revision=row.revision,
        parent=row.parent,
        author=row.author,
        source=row.source,
        status=cast(LabelStatus, row.status),
        created_at=row.created_at,
        path=root / row.path,
        voxel_counts={int(k): int(v) for k, v in (row.voxel_counts or {}).items()},
        finalized_by=row.finalized_by,
        finalized_at=row.finalized_at,
    )
