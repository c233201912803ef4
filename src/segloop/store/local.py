"""The local datastore: files under one folder plus an SQL database (SQLite by default).

Layout under ``root``::

    segloop.db                                   SQLite database (WAL)
    images/<id>.nii.gz                           images
    labels/<image_id>/r<NNNNNN>-<random>.nii.gz  label revisions (unique names, never overwritten)
    models/<name>/v<NNNN>.pt                     model checkpoints
    attachments/<image_id>/<kind>/               files kept with an image (e.g. its DICOM headers)
    staging/                                     temporary files (same filesystem as the above)

Files are written to ``staging/``, fsynced and renamed into place *before* the row that makes
them visible is committed; a crash in between leaves an orphan file but never a row without
its file. Every method either succeeds or leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import time
import unicodedata
import weakref
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast, get_args

import nibabel as nib
import numpy as np
from sqlalchemy import CursorResult, Engine, and_, delete, event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segloop.imaging.errors import GeometryError, ImagingError
from segloop.imaging.nifti import read_nifti
from segloop.imaging.volume import Volume
from segloop.store import database
from segloop.store.errors import ConflictError, NotFoundError, ValidationError
from segloop.store.filters import SeriesFilter
from segloop.store.records import (
    ImageRecord,
    LabelClass,
    LabelRevision,
    LabelSchema,
    LabelState,
    LabelStatus,
    ModelRecord,
    ModelVersion,
)
from segloop.store.sql import (
    WRITE_OPTION,
    ImageRow,
    LabelClassRow,
    LabelRevisionRow,
    ModelRow,
    ModelVersionRow,
    StoreMetaRow,
    create_schema,
    make_engine,
    utcnow,
)

DB_NAME = "segloop.db"
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 1024
MAX_LABEL_VALUE = 65535
DEFAULT_BACKGROUND = LabelClass(0, "background", (0, 0, 0))
_LABEL_STATES: tuple[str, ...] = get_args(LabelState)
_LABEL_STATUSES: tuple[str, ...] = get_args(LabelStatus)
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_COUNT_CHUNK = 1 << 22  # voxels per bincount chunk (bounded memory on large volumes)


# --- names ------------------------------------------------------------------------------


def slugify(name: str, max_length: int = MAX_ID_LENGTH - 8) -> str:
    """A file-name-safe id from a display name: ``[A-Za-z0-9._-]``, no leading dot or dash,
    image suffixes (``.nii.gz``...) removed; ``"image"`` when nothing is left.

    Path separators become dashes, so ``../x`` gives ``x`` and ``/etc/passwd`` gives
    ``etc-passwd``: an id can never name a path outside its folder.
    """
    text = name.strip()
    lowered = text.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lowered.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    # accents off (é -> e), then path segments joined by dashes, dropping "." and ".."
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = "-".join(part for part in re.split(r"[/\\]+", text) if part.strip() not in ("", ".", ".."))
    slug = _BAD_ID_CHARS.sub("-", text)
    slug = re.sub(r"-{2,}", "-", slug).lstrip(".-").rstrip(".-")
    slug = slug[:max_length].rstrip(".-")
    return slug or "image"


def _check_text(value: object, what: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A non-empty string without control characters (NUL cannot be stored in PostgreSQL)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ValidationError(f"{what} is longer than {max_length} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValidationError(f"{what} contains control characters: {value!r}")
    return value


def check_model_name(name: object) -> str:
    """Model names are slugs already (they are folder names and API path segments)."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        hint = f" (try {slugify(name)!r})" if isinstance(name, str) else ""
        raise ValidationError(
            f"model name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ - "
            f"starting with a letter or digit{hint}"
        )
    return name


# --- JSON -------------------------------------------------------------------------------


def _to_json(obj: Any, what: str, strict: bool) -> Any:
    """``obj`` as plain JSON data. Numpy values become Python ones, non-finite floats None.

    Unsupported objects raise `ValidationError` when ``strict``, else become ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _to_json(obj.tolist(), what, strict)
    if isinstance(obj, (Path, datetime)):
        return str(obj) if isinstance(obj, Path) else obj.isoformat()
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v, what, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v, what, strict) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace").replace("\x00", "")
    if strict:
        raise ValidationError(f"{what} is not JSON data: {type(obj).__name__} {obj!r:.80}")
    return str(obj)


def _json_strict(obj: Any, what: str) -> Any:
    if not isinstance(obj, Mapping):
        raise ValidationError(f"{what} must be a dict, got {type(obj).__name__}")
    data = _to_json(obj, what, strict=True)
    json.dumps(data)  # proves it serialises
    return data


def _strip_nul(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.replace("\x00", "")
    if isinstance(obj, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_nul(v) for v in obj]
    return obj


# --- files ------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nifti_image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _dispose_after_fork() -> None:
    # A forked child must not reuse its parent's pooled connections.
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)


class LocalDatastore:
    """Images, label revisions and model versions in a folder plus SQLite.

    Safe to share between threads, and between processes opening the same folder.
    ``url`` (default: ``$SEGLOOP_DB``, else ``segloop.db`` in ``root``) selects another database
    (PostgreSQL) for the same tables; files still live under ``root`` (`segloop.store.database`).
    """

    def __init__(self, root: Path | str, *, url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "labels", "models", "staging", "attachments"):
            (self.root / sub).mkdir(exist_ok=True)
        self.url = database.resolve(self.root, "store", url)
        self._engine = make_engine(self.url)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        _engines.add(self._engine)
        create_schema(self._engine)
        database.bind(self.root, self.url)

    def __repr__(self) -> str:
        return f"LocalDatastore({str(self.root)!r})"

    def close(self) -> None:
        """Close pooled database connections (the store can still be used; it reconnects)."""
        self._engine.dispose()

    def secure_delete(self) -> None:
        """SQLite: from now on deleted rows are overwritten with zeros in the database file
        (``PRAGMA secure_delete``), so a deleted image's metadata does not linger in free space
        (ephemeral mode). Pooled connections are closed so every connection gets the setting."""
        if self._engine.dialect.name != "sqlite":
            return

        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            try:
                cur.execute("PRAGMA secure_delete = ON")
            finally:
                cur.close()

        event.listen(self._engine, "connect", _on_connect)
        self._engine.dispose()

    def __enter__(self) -> LocalDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions and helpers -------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it holds the write lock from the start, so the
        checks made inside it still hold at commit (processes and threads serialise here)."""
        with Session(self._writer, expire_on_commit=False) as s, s.begin():
            if self._engine.dialect.name != "sqlite":
                # serialise writers on other databases too (SQLite: BEGIN IMMEDIATE)
                s.execute(select(StoreMetaRow).where(StoreMetaRow.key == "schema_version").with_for_update())
            yield s

    def _abs(self, rel: str) -> Path:
        return self.root / rel

    def _staging_temp(self, suffix: str) -> Path:
        return self.root / "staging" / f".tmp-{secrets.token_hex(8)}{suffix}"

    def _write_nifti_into(self, array: np.ndarray, affine: np.ndarray, dest: Path) -> None:
        """Write a gzip (level 1) NIfTI to a staging file, fsync it, rename it onto ``dest``."""
        tmp = self._staging_temp(".nii.gz")
        try:
            try:
                nib.save(_nifti_image(array, affine), str(tmp))  # nibabel's gzip level is 1
            except (nib.spatialimages.HeaderDataError, ValueError) as exc:
                raise ValidationError(f"cannot store array of dtype {array.dtype} as NIfTI: {exc}") from exc
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _image_row(self, s: Session, image_id: str) -> ImageRow:
        row = s.get(ImageRow, image_id) if isinstance(image_id, str) else None
        if row is None:
            raise NotFoundError(f"image {image_id!r} not found")
        return row

    # --- label schema ----------------------------------------------------------------------

    def get_schema(self) -> LabelSchema:
        with self._read() as s:
            rows = s.scalars(select(LabelClassRow).order_by(LabelClassRow.value)).all()
            classes = [LabelClass(r.value, r.name, (r.red, r.green, r.blue)) for r in rows]
        if not any(c.value == 0 for c in classes):
            classes.insert(0, DEFAULT_BACKGROUND)
        return LabelSchema(tuple(classes))

    def set_schema(self, schema: LabelSchema) -> None:
        """Replace the label schema. Value 0 (background) is added when missing.

        Names and colours may change freely; a class value that saved label revisions contain
        cannot be removed (those revisions would hold values outside the schema): `ValidationError`
        naming the classes and how many revisions use them, and the schema is left as it was.
        """
        classes = _validate_schema(schema)
        with self._write() as s:
            old = {row.value: row.name for row in s.scalars(select(LabelClassRow))}
            removed = set(old) - {c.value for c in classes} - {0}
            if removed:
                used: dict[int, int] = {}
                for counts in s.scalars(select(LabelRevisionRow.voxel_counts)):
                    for key, n in (counts or {}).items():
                        if int(key) in removed and n:
                            used[int(key)] = used.get(int(key), 0) + 1
                if used:
                    listed = ", ".join(f"{old[v]!r} (value {v}, in {n} revision{'s' if n != 1 else ''})"
                                       for v, n in sorted(used.items()))
                    raise ValidationError(
                        f"the new label schema drops classes that saved label revisions use: {listed}; "
                        "keep them (rename or recolour them instead)"
                    )
            s.execute(delete(LabelClassRow))
            s.flush()
            for c in classes:
                s.add(
                    LabelClassRow(
                        value=c.value, name=c.name, red=c.color[0], green=c.color[1], blue=c.color[2]
                    )
                )

    # --- images ------------------------------------------------------------------------------

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
                        _fsync_dir(dest.parent)
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
            _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    # --- label revisions -------------------------------------------------------------------

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

    # --- models ------------------------------------------------------------------------------

    def create_model(self, name: str, config: dict[str, Any]) -> ModelRecord:
        """Create a model; an existing one with the same config is returned as it is."""
        name = check_model_name(name)
        cfg = _json_strict(config, "model config")
        try:
            with self._write() as s:
                row = s.get(ModelRow, name)
                if row is None:
                    s.add(ModelRow(name=name, config=cfg, current_version=None, created_at=utcnow()))
                elif row.config != cfg:
                    raise ValidationError(f"model {name!r} already exists with a different config")
        except IntegrityError:  # created concurrently (databases without a global write lock)
            pass
        record = self.get_model(name)
        if record.config != cfg:
            raise ValidationError(f"model {name!r} already exists with a different config")
        return record

    def get_model(self, name: str) -> ModelRecord:
        with self._read() as s:
            row = s.get(ModelRow, name) if isinstance(name, str) else None
            if row is None:
                raise NotFoundError(f"model {name!r} not found")
            versions = s.scalars(
                select(ModelVersionRow).where(ModelVersionRow.model == name).order_by(ModelVersionRow.version)
            ).all()
            return _model_record(row, versions, self.root)

    def list_models(self) -> list[ModelRecord]:
        with self._read() as s:
            models = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            versions = s.scalars(
                select(ModelVersionRow).order_by(ModelVersionRow.model, ModelVersionRow.version)
            ).all()
        by_model: dict[str, list[ModelVersionRow]] = {}
        for v in versions:
            by_model.setdefault(v.model, []).append(v)
        return [_model_record(m, by_model.get(m.name, []), self.root) for m in models]

    def staging_dir(self) -> Path:
        """A folder on the store's filesystem for files that `add_model_version` will move in."""
        path = self.root / "staging"
        path.mkdir(exist_ok=True)
        return path

    def add_model_version(
        self,
        name: str,
        checkpoint: Path,
        *,
        config: dict[str, Any],
        trained_on: Iterable[tuple[str, int]],
        metrics: dict[str, Any],
        make_current: bool = True,
    ) -> ModelVersion:
        """Move ``checkpoint`` (a file in `staging_dir`) to ``models/<name>/vNNNN.pt`` and record
        it as the next version, all or nothing (on failure the file is back where it was)."""
        cfg = _json_strict(config, "version config")
        mets = _json_strict(metrics, "metrics")
        pairs = _check_trained_on(trained_on)
        src = Path(checkpoint)
        if src.is_symlink() or not src.is_file():
            raise ValidationError(f"checkpoint {str(src)!r} is not a regular file")
        src = src.resolve()
        if not src.is_relative_to(self.staging_dir().resolve()):
            raise ValidationError(
                f"checkpoint {str(src)!r} must be in the staging folder {str(self.staging_dir())!r}"
            )
        dest: Path | None = None
        try:
            with self._write() as s:
                model = s.get(ModelRow, name, with_for_update=True) if isinstance(name, str) else None
                if model is None:
                    raise NotFoundError(f"model {name!r} not found")
                number = (
                    s.scalar(select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model == name))
                    or 0
                ) + 1
                rel = f"models/{name}/v{number:04d}.pt"
                row = ModelVersionRow(
                    model=name,
                    version=number,
                    checkpoint=rel,
                    config=cfg,
                    trained_on=[list(p) for p in pairs],
                    metrics=mets,
                    created_at=utcnow(),
                )
                s.add(row)
                if make_current:
                    model.current_version = number
                s.flush()
                target = self._abs(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, target)  # under the write lock: only an orphan can be replaced
                dest = target
                _fsync_dir(target.parent)
        except BaseException:
            if dest is not None:
                with contextlib.suppress(OSError):
                    os.replace(dest, src)
            raise
        return _version_record(row, self.root)

    def set_current_version(self, name: str, version: int) -> ModelRecord:
        """Select which version is current (rollback or roll forward)."""
        with self._write() as s:
            model = s.get(ModelRow, name) if isinstance(name, str) else None
            if model is None:
                raise NotFoundError(f"model {name!r} not found")
            exists = s.scalar(
                select(ModelVersionRow.id).where(
                    ModelVersionRow.model == name, ModelVersionRow.version == version
                )
            )
            if exists is None:
                raise NotFoundError(f"model {name!r} has no version {version}")
            model.current_version = version
        return self.get_model(name)

    # --- maintenance -------------------------------------------------------------------------

    def sweep(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove what crashes leave behind, if older than ``older_than_s``: this store's
        temporary files in ``staging/`` and image, label and checkpoint files that no row
        refers to. Returns the removed paths. Younger files may belong to a save in flight."""
        cutoff = time.time() - older_than_s
        removed: list[Path] = []

        def old(path: Path) -> bool:
            try:
                return path.lstat().st_mtime < cutoff
            except OSError:
                return False

        staging = self.staging_dir()
        for entry in staging.iterdir():
            if entry.name.startswith((".tmp-", ".deleted-")) and old(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        with self._write() as s:  # no row can appear or vanish while we look
            referenced = set(s.scalars(select(ImageRow.path)).all())
            referenced |= set(s.scalars(select(LabelRevisionRow.path)).all())
            referenced |= set(s.scalars(select(ModelVersionRow.checkpoint)).all())
            image_ids = set(s.scalars(select(ImageRow.id)).all())
            for sub in ("images", "labels", "models"):
                for path in sorted((self.root / sub).rglob("*")):
                    if (
                        path.is_file()
                        and path.relative_to(self.root).as_posix() not in referenced
                        and old(path)
                    ):
                        path.unlink(missing_ok=True)
                        removed.append(path)
            attachments = self.root / "attachments"
            for folder in attachments.iterdir() if attachments.is_dir() else ():
                if folder.is_dir() and folder.name not in image_ids and old(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
            for folder in (self.root / "labels").iterdir():
                if (
                    folder.is_dir()
                    and folder.name not in image_ids
                    and not any(folder.iterdir())
                    and old(folder)
                ):
                    folder.rmdir()
        return removed


def open_datastore(root: Path | str, *, url: str | None = None) -> LocalDatastore:
    """Open (creating it if needed) the local datastore in folder ``root``."""
    return LocalDatastore(root, url=url)


# --- validation ---------------------------------------------------------------------------


def _check_state(state: object) -> str:
    if state not in _LABEL_STATES:
        raise ValidationError(f"label_state must be one of {list(_LABEL_STATES)}, got {state!r}")
    return cast(str, state)


def _conflict(image_id: str, base: int | None, current: int | None) -> ConflictError:
    if current is None:
        msg = f"image {image_id!r} has no label revision yet; save with base_revision=None (got {base})"
    elif base is None:
        msg = f"image {image_id!r} already has revision {current}; save with base_revision={current}"
    else:
        msg = f"base revision {base} of image {image_id!r} is stale; the latest revision is {current}"
    return ConflictError(msg, current)


def _validate_schema(schema: LabelSchema) -> list[LabelClass]:
    if not isinstance(schema, LabelSchema):
        raise ValidationError(f"set_schema needs a LabelSchema, got {type(schema).__name__}")
    classes: list[LabelClass] = []
    values: set[int] = set()
    names: set[str] = set()
    for c in schema.classes:
        if not isinstance(c, LabelClass):
            raise ValidationError(f"schema classes must be LabelClass, got {type(c).__name__}")
        if (
            isinstance(c.value, bool)
            or not isinstance(c.value, (int, np.integer))
            or not 0 <= c.value <= MAX_LABEL_VALUE
        ):
            raise ValidationError(f"class value must be an integer 0-{MAX_LABEL_VALUE}, got {c.value!r}")
        name = _check_text(c.name, "class name", 128).strip()
        color = tuple(c.color) if isinstance(c.color, (tuple, list)) else ()
        if len(color) != 3 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
        ):
            raise ValidationError(
                f"class {name!r} colour must be three integers 0-255 (RGB), got {c.color!r}"
            )
        if int(c.value) in values:
            raise ValidationError(f"class value {c.value} appears twice in the schema")
        if name.lower() in names:
            raise ValidationError(f"class name {name!r} appears twice in the schema")
        values.add(int(c.value))
        names.add(name.lower())
        classes.append(LabelClass(int(c.value), name, (int(color[0]), int(color[1]), int(color[2]))))
    if 0 not in values:
        if DEFAULT_BACKGROUND.name in names:
            raise ValidationError("the schema names a class 'background' but has no value 0")
        classes.append(DEFAULT_BACKGROUND)
    return sorted(classes, key=lambda c: c.value)


def _check_trained_on(trained_on: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    pairs: list[tuple[str, int]] = []
    for item in trained_on:
        try:
            image_id, revision = item
        except (TypeError, ValueError):
            raise ValidationError(
                f"trained_on items must be (image_id, revision) pairs, got {item!r}"
            ) from None
        if (
            not isinstance(image_id, str)
            or isinstance(revision, bool)
            or not isinstance(revision, (int, np.integer))
        ):
            raise ValidationError(f"trained_on items must be (image_id, revision) pairs, got {item!r}")
        pairs.append((image_id, int(revision)))
    return pairs


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


# --- rows -> records ------------------------------------------------------------------------


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


def _version_record(row: ModelVersionRow, root: Path) -> ModelVersion:
    return ModelVersion(
        model=row.model,
        version=row.version,
        checkpoint=root / row.checkpoint,
        config=dict(row.config or {}),
        trained_on=tuple((str(p[0]), int(p[1])) for p in row.trained_on or []),
        metrics=dict(row.metrics or {}),
        created_at=row.created_at,
    )


def _model_record(row: ModelRow, versions: Iterable[ModelVersionRow], root: Path) -> ModelRecord:
    return ModelRecord(
        name=row.name,
        config=dict(row.config or {}),
        current_version=row.current_version,
        versions=tuple(_version_record(v, root) for v in versions),
        created_at=row.created_at,
    )
