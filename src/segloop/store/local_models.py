"""Models of the local datastore: named models, their checkpoint versions (``models/<name>/
vNNNN.pt``, moved in from the staging folder with their row, all or nothing) and which
version is current."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from segloop.store.errors import NotFoundError, ValidationError
from segloop.store.json_data import _json_strict
from segloop.store.local_files import LocalFiles
from segloop.store.names import check_model_name
from segloop.store.records import ModelRecord, ModelVersion
from segloop.store.sql import ModelRow, ModelVersionRow, utcnow


class LocalModels(LocalFiles):
    """Models and their versions (``models/<name>/vNNNN.pt`` and their rows)."""

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
                self._sync_dir(target.parent)
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
