"""The `Datastore` protocol: where images, label revisions and model versions live.

Backends: `segloop.store.local.LocalDatastore` (files + SQLite, the embedded default);
DICOMweb and XNAT backends implement the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segloop.imaging.volume import Volume
from segloop.store.filters import SeriesFilter
from segloop.store.records import (
    ImageRecord,
    LabelRevision,
    LabelSchema,
    LabelState,
    LabelStatus,
    ModelRecord,
    ModelVersion,
)


@runtime_checkable
class Datastore(Protocol):
    # --- label schema -------------------------------------------------------------------
    def get_schema(self) -> LabelSchema: ...
    def set_schema(self, schema: LabelSchema) -> None: ...

    # --- images -------------------------------------------------------------------------
    def add_image(self, volume: Volume, name: str, source: str, modality: str | None = None) -> ImageRecord: ...
    def get_image(self, image_id: str) -> ImageRecord: ...
    def list_images(
        self,
        label_state: LabelState | None = None,
        offset: int = 0,
        limit: int | None = None,
        filters: SeriesFilter | None = None,
    ) -> list[ImageRecord]: ...
    def count_images(self, label_state: LabelState | None = None, filters: SeriesFilter | None = None) -> int: ...
    def load_image(self, image_id: str) -> Volume: ...
    def image_path(self, image_id: str) -> Path: ...
    def delete_image(self, image_id: str) -> None: ...
    def attachments_dir(self, image_id: str, kind: str) -> Path: ...
    def attach(self, image_id: str, kind: str, folder: Path) -> Path: ...

    # --- label revisions (append-only) --------------------------------------------------
    def save_label(
        self,
        image_id: str,
        label: Volume | np.ndarray,
        *,
        author: str,
        source: str = "manual",
        status: LabelStatus = "draft",
        base_revision: int | None = None,
    ) -> LabelRevision: ...
    def list_revisions(self, image_id: str) -> list[LabelRevision]: ...
    def get_revision(self, image_id: str, revision: int | None = None) -> LabelRevision: ...
    def load_label(self, image_id: str, revision: int | None = None) -> Volume: ...
    def mark_final(self, image_id: str, revision: int, *, author: str) -> LabelRevision: ...
    def final_labels(self) -> list[LabelRevision]: ...

    # --- models -------------------------------------------------------------------------
    def create_model(self, name: str, config: dict[str, Any]) -> ModelRecord: ...
    def get_model(self, name: str) -> ModelRecord: ...
    def list_models(self) -> list[ModelRecord]: ...
    def staging_dir(self) -> Path: ...
    def add_model_version(
        self,
        name: str,
        checkpoint: Path,
        *,
        config: dict[str, Any],
        trained_on: Iterable[tuple[str, int]],
        metrics: dict[str, Any],
        make_current: bool = True,
    ) -> ModelVersion: ...
    def set_current_version(self, name: str, version: int) -> ModelRecord: ...
