"""Clicks: a class value and a voxel index, and parsing of user click specifications."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from segloop.store.records import LabelSchema


@dataclass(frozen=True)
class Click:
    """One click: ``value`` is the class it asks for (0 = background), ``point`` a voxel index ``(i, j, k)``."""

    value: int
    point: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.value, "points": [list(self.point)]}


def _class_value(cls: Any, schema: LabelSchema | None, allowed: set[int]) -> int:
    if isinstance(cls, bool):
        raise ValueError(f"unknown class {cls!r}")
    if isinstance(cls, int):
        if cls not in allowed:
            raise ValueError(f"unknown class {cls!r} (known values: {sorted(allowed)})")
        return cls
    if isinstance(cls, str):
        text = cls.strip()
        if text.lower() == "background":
            return 0
        if schema is not None:
            try:
                return schema.by_name(text).value
            except KeyError:
                pass
        if text.lstrip("-").isdigit():
            return _class_value(int(text), schema, allowed)
        names = ["background"] + ([c.name for c in schema.foreground] if schema else [])
        raise ValueError(f"unknown class {cls!r} (known classes: {', '.join(names)})")
    raise ValueError(f"unknown class {cls!r}: give a class name or value")


def parse_clicks(
    spec: Sequence[dict[str, Any]],
    schema: LabelSchema | None,
    shape: Sequence[int],
    *,
    values: Iterable[int] | None = None,
) -> list[Click]:
    """Parse ``[{"class": "anterior" | 1 | "background", "points": [[i, j, k], ...]}, ...]``.

    Args:
        spec: list of groups; a class is given by name (case-insensitive), by value, or as "background".
        schema: the label schema naming the classes (``None``: values only).
        shape: spatial shape ``(X, Y, Z)`` the points must lie in.
        values: allowed class values (default: the schema's values, background included).

    Returns:
        Clicks in the order given.

    Raises:
        ValueError: naming the unknown class, the point outside the shape, or the malformed entry.
    """
    if not isinstance(spec, (list, tuple)):
        raise ValueError("clicks must be a list of {\"class\": ..., \"points\": [[i, j, k], ...]} objects")
    allowed = set(values) if values is not None else (schema.values if schema is not None else {0})
    allowed.add(0)
    clicks: list[Click] = []
    for n, group in enumerate(spec):
        if not isinstance(group, dict) or "class" not in group or "points" not in group:
            raise ValueError(f"clicks entry {n}: expected an object with \"class\" and \"points\"")
        value = _class_value(group["class"], schema, allowed)
        points = group["points"]
        if not isinstance(points, (list, tuple)):
            raise ValueError(f"clicks entry {n}: \"points\" must be a list of [i, j, k]")
        for p in points:
            clicks.append(Click(value, check_point(p, shape)))
    return clicks


def check_point(point: Any, shape: Sequence[int]) -> tuple[int, int, int]:
    """``point`` as an int triple inside ``shape``; ValueError naming it otherwise."""
    if not isinstance(point, (list, tuple)) or len(point) != 3:
        raise ValueError(f"click point {point!r} is not [i, j, k]")
    try:
        ijk = tuple(int(v) for v in point)
    except (TypeError, ValueError):
        raise ValueError(f"click point {point!r} is not [i, j, k] integers") from None
    if any(float(v) != int(v) for v in point):
        raise ValueError(f"click point {list(point)} must be integer voxel indices")
    if not all(0 <= v < s for v, s in zip(ijk, shape, strict=True)):
        raise ValueError(f"click point {list(ijk)} is outside the volume of shape {tuple(int(s) for s in shape)}")
    return (ijk[0], ijk[1], ijk[2])


def validate_clicks(clicks: Iterable[Click], values: Iterable[int], shape: Sequence[int]) -> list[Click]:
    """Check `Click` objects against allowed class values and a shape (ValueError naming the culprit)."""
    allowed = set(values) | {0}
    out = []
    for c in clicks:
        if int(c.value) not in allowed:
            raise ValueError(f"unknown class {c.value!r} in click at {list(c.point)} (known values: {sorted(allowed)})")
        out.append(Click(int(c.value), check_point(list(c.point), shape)))
    return out
