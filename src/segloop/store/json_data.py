"""Metadata, configs and metrics as plain JSON data (what the store's JSON columns hold)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from segloop.store.errors import ValidationError


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
