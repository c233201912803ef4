"""The file side of the local datastore: paths under its folder, the staging folder, atomic
writes (write to ``staging/``, fsync, rename into place, fsync the folder) and the sweep that
removes what crashes leave behind (temporary files, files no row refers to).

Files are renamed into place *before* the row that makes them visible is committed; a crash in
between leaves an orphan file (removed by `LocalFiles.sweep`) but never a row without its file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from sqlalchemy import select

from segloop.store.errors import ValidationError
from segloop.store.local_sessions import LocalSessions
from segloop.store.sql import ImageRow, LabelRevisionRow, ModelVersionRow


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


class LocalFiles(LocalSessions):
    """Files under ``root``: where they go and how they get there atomically."""

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
            self._sync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def staging_dir(self) -> Path:
        """A folder on the store's filesystem for files that `add_model_version` will move in."""
        path = self.root / "staging"
        path.mkdir(exist_ok=True)
        return path

    @staticmethod
    def _sync_dir(path: Path) -> None:
        """Make a rename in ``path`` durable; every rename of the store goes through here."""
        _fsync_dir(path)

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
