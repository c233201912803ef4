"""Layer 2, store: images, label revisions (append-only) and model versions. No torch or HTTP here."""

from segloop.store.base import Datastore
from segloop.store.errors import ConflictError, NotFoundError, StoreError, ValidationError
from segloop.store.records import (
    ImageRecord,
    LabelClass,
    LabelRevision,
    LabelSchema,
    ModelRecord,
    ModelVersion,
)

__all__ = [
    "ConflictError",
    "Datastore",
    "ImageRecord",
    "LabelClass",
    "LabelRevision",
    "LabelSchema",
    "ModelRecord",
    "ModelVersion",
    "NotFoundError",
    "StoreError",
    "ValidationError",
]
