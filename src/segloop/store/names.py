"""Names in the local datastore: image ids made from display names, model names, and the
checks every stored text passes (no control characters, bounded length)."""

from __future__ import annotations

import re
import unicodedata

from segloop.store.errors import ValidationError

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 1024
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


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
