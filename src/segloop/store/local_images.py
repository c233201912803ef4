"""Images of the local datastore: adding them under ids made from their names, listing and
filtering them, loading and deleting them, and the files attached to them."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import cast, get_args

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segloop.imaging.errors import ImagingError
from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.store.errors import ConflictError, ValidationError
from segloop.store.filters import SeriesFilter
from segloop.store.json_data import _strip_nul, _to_json
from segloop.store.local_files import LocalFiles
from segloop.store.names import _check_text, slugify
from segloop.store.records import ImageRecord, LabelState
from segloop.store.sql import ImageRow, LabelRevisionRow, utcnow

_LABEL_STATES: tuple[str, ...] = get_args(LabelState)


class LocalImages(LocalFiles):
    """Images (``images/<id>.nii.gz`` and their rows) and the files attached to them."""

    def add_image(self, volume: Volume, name: str, source: str, modality: str | None = None) -> ImageRecord:
        """Store ``volume`` under a new id made from ``name`` (``-2``, ``-3``... on duplicates)."""
        if not isinstance(volume, Volume):
            raise ValidationError(f"add_image needs a Volume, got {type(volume).__name__}")
        name = _check_text(name, "image name")
        source = _check_text(source, "image source")
        mod = modality if modality is not None else volume.metadata.get("modality")
        modality_text = _check_text(str(mod), "modality", 64) if mod not in (None, "") else "unknown"
        affine = np.asarray(volume.affine, dtype=np.float64)
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValidationError("image affine is not finite or is singular")
        if min(volume.array.shape) < 1:
            raise ValidationError(f"image has an empty dimension: shape {volume.array.shape}")
        array = np.asarray(volume.array)
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        metadata = _strip_nul(_to_json(dict(volume.metadata), "image metadata", strict=False))
        base_id = slugify(name)

        tmp = self._staging_temp(".nii.gz")
        dest: Path | None = None
        try:
            self._write_nifti_into(array, affine, tmp)
            for _attempt in range(5):
                try:
                    with self._write() as s:
                        image_id = self._free_id(s, base_id)
                        rel = f"images/{image_id}.nii.gz"
                        row = ImageRow(
                            id=image_id,
                            id_key=image_id.lower(),
                            name=name,
                            source=source,
                            modality=modality_text,
                            shape=list(volume.shape),
                            spacing=list(volume.spacing),
                            affine=affine.tolist(),
                            channels=volume.channels,
                            dtype=str(array.dtype),
                            meta=metadata,
                            path=rel,
                            created_at=utcnow(),
                            label_state="none",
                        )
                        s.add(row)
                        s.flush()  # constraint errors surface before the file moves
                        dest = self._abs(rel)
                        os.replace(tmp, dest)  # serialised by the write lock: only orphans replaced
                        self._sync_dir(dest.parent)
                    return _image_record(row)
                except IntegrityError:  # a racing writer took the id (databases without a global lock)
                    if dest is not None:
                        os.replace(dest, tmp)
                        dest = None
                    continue
            raise ConflictError(f"could not find a free id for image {name!r}", None)
        except BaseException:
            tmp.unlink(missing_ok=True)
            if dest is not None:
                dest.unlink(missing_ok=True)
            raise

    @staticmethod
    def _free_id(s: Session, base: str) -> str:
        """``base`` or ``base-N``, the first not taken (case-insensitively)."""
        taken = set(
            s.scalars(
                select(ImageRow.id_key).where(
                    (ImageRow.id_key == base.lower())
                    | ImageRow.id_key.startswith(base.lower() + "-", autoescape=True)
                )
            ).all()
        )
        if base.lower() not in taken:
            return base
        n = 2
        while f"{base}-{n}".lower() in taken:
            n += 1
        return f"{base}-{n}"

    def get_image(self, image_id: str) -> ImageRecord:
        with self._read() as s:
            return _image_record(self._image_row(s, image_id))

    def list_images(
        self,
        label_state: LabelState | None = None,
        offset: int = 0,
        limit: int | None = None,
        filters: SeriesFilter | None = None,
    ) -> list[ImageRecord]:
        """Images in the order they were added, optionally only those with ``label_state`` and
        matching ``filters`` (modality, study date, description; `segloop.store.filters`)."""
        if offset < 0 or (limit is not None and limit < 0):
            raise ValidationError(f"offset and limit must not be negative (offset={offset}, limit={limit})")
        query = select(ImageRow).order_by(ImageRow.created_at, ImageRow.id)
        if label_state is not None:
            query = query.where(ImageRow.label_state == _check_state(label_state))
        if filters:
            if filters.empty:
                return []
            if filters.modality:
                query = query.where(func.upper(ImageRow.modality) == filters.modality)
            with self._read() as s:  # date and description live in the metadata: matched here
                found = [r for r in (_image_record(row) for row in s.scalars(query).all()) if filters.matches(r)]
            found = found[offset:]
            return found if limit is None else found[:limit]
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as s:
            return [_image_record(r) for r in s.scalars(query).all()]

    def count_images(self, label_state: LabelState | None = None, filters: SeriesFilter | None = None) -> int:
        if filters:
            return len(self.list_images(label_state, filters=filters))
        query = select(func.count()).select_from(ImageRow)
        if label_state is not None:
            query = query.where(ImageRow.label_state == _check_state(label_state))
        with self._read() as s:
            return int(s.scalar(query) or 0)

    def image_path(self, image_id: str) -> Path:
        with self._read() as s:
            return self._abs(self._image_row(s, image_id).path)

    def load_image(self, image_id: str) -> Volume:
        """The image with the affine it was added with and its metadata (plus id and name)."""
        with self._read() as s:
            row = self._image_row(s, image_id)
            record, path = _image_record(row), self._abs(row.path)
        vol = read_nifti(path)
        if vol.shape != record.shape:
            raise ImagingError(path, f"stored shape {vol.shape} differs from the recorded {record.shape}")
        meta = {**record.metadata, "image_id": record.id, "name": record.name, "modality": record.modality}
        return Volume(vol.array, np.array(record.affine, dtype=np.float64), meta)

    def delete_image(self, image_id: str) -> None:
        """Remove the image, all its label revisions and their files."""
        trash = self.root / "staging" / f".deleted-{secrets.token_hex(8)}"
        moved: list[tuple[Path, Path]] = []
        try:
            with self._write() as s:
                row = self._image_row(s, image_id)
                s.execute(delete(LabelRevisionRow).where(LabelRevisionRow.image_id == image_id))
                s.delete(row)
                s.flush()
                # Move the files aside under the write lock so a new image reusing the id
                # cannot lose its files; put them back if the commit fails.
                trash.mkdir()
                for src, dst in (
                    (self._abs(row.path), trash / "image"),
                    (self.root / "labels" / image_id, trash / "labels"),
                    (self.root / "attachments" / image_id, trash / "attachments"),
                ):
                    if src.exists():
                        os.replace(src, dst)
                        moved.append((src, dst))
        except BaseException:
            for src, dst in reversed(moved):
                with contextlib.suppress(OSError):
                    os.replace(dst, src)
            shutil.rmtree(trash, ignore_errors=True)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    # --- attachments ---------------------------------------------------------------------------

    _KIND = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

    def attachments_dir(self, image_id: str, kind: str) -> Path:
        """The folder of the image's ``kind`` attachments (e.g. ``"dicom-headers"``): files
        that belong to the image and are deleted with it. It may not exist (nothing attached).

        Raises:
            NotFoundError: no such image.
            ValidationError: ``kind`` is not a short lower-case slug.
        """
        if not isinstance(kind, str) or not self._KIND.match(kind):
            raise ValidationError(f"attachment kind {kind!r} must be a short lower-case slug")
        with self._read() as s:
            row = self._image_row(s, image_id)
        return self.root / "attachments" / row.id / kind

    def attach(self, image_id: str, kind: str, folder: Path) -> Path:
        """Move ``folder`` (in `staging_dir`) into place as the image's ``kind`` attachments,
        replacing earlier ones, with one rename (all or nothing). Returns the new folder."""
        src = Path(folder).resolve()
        if not src.is_dir() or not src.is_relative_to(self.staging_dir().resolve()):
            raise ValidationError(f"attachment folder {str(src)!r} must be a folder in {str(self.staging_dir())!r}")
        with self._write() as s:  # under the write lock: the image cannot vanish meanwhile
            self._image_row(s, image_id)
            dest = self.root / "attachments" / image_id / kind
            if not self._KIND.match(kind):
                raise ValidationError(f"attachment kind {kind!r} must be a short lower-case slug")
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if dest.exists():
                old = self._staging_temp("")
                os.replace(dest, old)
            os.replace(src, dest)
            self._sync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dest


def _check_state(state: object) -> str:
    if state not in _LABEL_STATES:
        raise ValidationError(f"label_state must be one of {list(_LABEL_STATES)}, got {state!r}")
    return cast(str, state)


def _image_record(row: ImageRow) -> ImageRecord:
    shape = row.shape
    spacing = row.spacing
    return ImageRecord(
        id=row.id,
        name=row.name,
        source=row.source,
        modality=row.modality,
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        affine=tuple(tuple(float(v) for v in r) for r in row.affine),
        channels=row.channels,
        metadata=dict(row.meta or {}),
        created_at=row.created_at,
        label_state=cast(LabelState, row.label_state),
        latest_revision=row.latest_revision,
        latest_author=row.latest_author,
    )
