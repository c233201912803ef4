"""Plain records returned by a `Datastore` (immutable, JSON-friendly through `to_dict`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

LabelStatus = Literal["draft", "final"]
LabelState = Literal["none", "draft", "final"]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class LabelClass:
    """One class of the label schema. Value 0 is always background."""

    value: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)


@dataclass(frozen=True)
class LabelSchema:
    classes: tuple[LabelClass, ...]

    @property
    def values(self) -> set[int]:
        return {c.value for c in self.classes} | {0}

    def by_name(self, name: str) -> LabelClass:
        for c in self.classes:
            if c.name.lower() == name.lower():
                return c
        raise KeyError(name)

    def by_value(self, value: int) -> LabelClass:
        for c in self.classes:
            if c.value == value:
                return c
        raise KeyError(value)

    @property
    def foreground(self) -> tuple[LabelClass, ...]:
        return tuple(c for c in self.classes if c.value != 0)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": [_jsonable(asdict(c)) for c in self.classes]}


@dataclass(frozen=True)
class ImageRecord:
    id: str
    name: str
    source: str
    modality: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    channels: int
    metadata: dict[str, Any]
    created_at: datetime
    # Label summary, filled by list/get so callers need no second query.
    label_state: LabelState = "none"
    latest_revision: int | None = None
    latest_author: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _jsonable(asdict(self))
        d["author"] = self.latest_author
        return d


@dataclass(frozen=True)
class LabelRevision:
    image_id: str
    revision: int
    parent: int | None
    author: str
    source: str
    status: LabelStatus
    created_at: datetime
    path: Path = field(compare=False)
    voxel_counts: dict[int, int] = field(default_factory=dict, compare=False)
    # Who marked the revision final, and when (None while it is a draft).
    finalized_by: str | None = field(default=None, compare=False)
    finalized_at: datetime | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _jsonable(asdict(self))
        d.pop("path", None)
        d["voxel_counts"] = {str(k): v for k, v in self.voxel_counts.items()}
        return d


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    checkpoint: Path
    config: dict[str, Any]
    trained_on: tuple[tuple[str, int], ...]
    metrics: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _jsonable(asdict(self))
        d.pop("checkpoint", None)
        return d


@dataclass(frozen=True)
class ModelRecord:
    name: str
    config: dict[str, Any]
    current_version: int | None
    versions: tuple[ModelVersion, ...]
    created_at: datetime

    def version(self, number: int | None = None) -> ModelVersion:
        """The given version, or the current one."""
        wanted = self.current_version if number is None else number
        for v in self.versions:
            if v.version == wanted:
                return v
        from segloop.store.errors import NotFoundError

        raise NotFoundError(f"model {self.name!r} has no version {wanted}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": _jsonable(self.config),
            "current_version": self.current_version,
            "versions": [v.to_dict() for v in self.versions],
            "created_at": self.created_at.isoformat(),
        }
