"""Series filters: modality, study date (range) and description, shared by every datastore.

`SeriesFilter` is what ``GET /api/v1/images?modality=&study_date=&description=`` and
``segloop serve --dicomweb-filter`` accept. A DICOMweb datastore sends it to the PACS as QIDO-RS
matching keys (``Modality``, ``StudyDate``, ``SeriesDescription``); the local store applies
`SeriesFilter.matches` to the metadata it kept at import — so the API answers the same on both.

Rules (the same on both stores):

* ``modality``: a DICOM modality code (``CT``, ``MR``, ...), case-insensitive, exact match.
* ``study_date``: ``YYYYMMDD``, or a range ``YYYYMMDD-YYYYMMDD`` (both ends included; an open end
  ``YYYYMMDD-`` or ``-YYYYMMDD`` as in DICOM). Images without a study date (NIfTI files) never
  match a date filter.
* ``description``: the series description contains the text (case-insensitive); ``*`` and
  ``?`` are DICOM wildcards over the whole description. An image without a series description
  (a NIfTI file) is matched on its name.

`SeriesFilter.narrow` combines two filters into one that matches only what both match (used to
apply a request's filters within the server's start-up filters, which a request cannot widen).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segloop.store.errors import ValidationError

_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
DATE_FORMAT_HELP = "YYYYMMDD or YYYYMMDD-YYYYMMDD (e.g. 20200101-20201231)"


def _check_date(text: str, whole: str) -> str:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ValidationError(f"study_date {whole!r}: {text} is not a calendar date; use {DATE_FORMAT_HELP}") from None
    return text


def parse_study_date(text: str) -> tuple[str | None, str | None]:
    """``"20200101"`` -> (20200101, 20200101); ``"20200101-20201231"`` -> the range; an open end is None.

    Raises:
        ValidationError: not one of those forms, not a calendar date, or start after end.
    """
    value = text.strip()
    m = _DATE_RANGE.match(value)
    if not value or m is None or (m.group(2) is None and m.group(3) is not None) or value == "-":
        raise ValidationError(f"study_date must be {DATE_FORMAT_HELP}, not {text!r}")
    start = _check_date(m.group(1), text) if m.group(1) else None
    end = _check_date(m.group(3), text) if m.group(3) else None
    if m.group(2) is None:
        end = start
    if start and end and start > end:
        raise ValidationError(f"study_date {text!r}: the range starts after it ends")
    return start, end


def _format_range(start: str | None, end: str | None) -> str | None:
    if start is None and end is None:
        return None
    if start is not None and start == end:
        return start
    return f"{start or ''}-{end or ''}"


@dataclass(frozen=True)
class SeriesFilter:
    """Normalised filters (see module doc); every field None matches everything."""

    modality: str | None = None
    study_date: str | None = None
    description: str | None = None
    empty: bool = False  # two filters that exclude each other: nothing matches

    @classmethod
    def parse(
        cls, modality: str | None = None, study_date: str | None = None, description: str | None = None
    ) -> SeriesFilter:
        """Validate and normalise. Raises `ValidationError` naming the bad value."""
        mod = None
        if modality is not None and modality.strip():
            mod = modality.strip().upper()
            if not _MODALITY.match(mod):
                raise ValidationError(f"modality must be a DICOM modality code such as CT or MR, not {modality!r}")
        date = None
        if study_date is not None and study_date.strip():
            date = _format_range(*parse_study_date(study_date))
        desc = None
        if description is not None and description.strip():
            desc = description.strip()
            if len(desc) > 64 or "\\" in desc or any(ord(ch) < 32 for ch in desc):
                raise ValidationError(
                    "description must be at most 64 characters of text without backslashes or control characters"
                )
        return cls(mod, date, desc)

    @classmethod
    def from_dict(cls, items: dict[str, str] | None) -> SeriesFilter:
        items = items or {}
        return cls.parse(items.get("modality"), items.get("study_date"), items.get("description"))

    def to_dict(self) -> dict[str, str]:
        out = {k: v for k, v in (("modality", self.modality), ("study_date", self.study_date),
                                 ("description", self.description)) if v is not None}
        return out

    def __bool__(self) -> bool:
        return self.empty or any(v is not None for v in (self.modality, self.study_date, self.description))

    def narrow(self, other: SeriesFilter) -> SeriesFilter:
        """A filter matching what both ``self`` and ``other`` match. Descriptions cannot be
        intersected into one pattern: the result keeps ``other``'s (``self``'s when ``other``
        has none) and `matches` with both filters must still be applied to be exact."""
        if self.empty or other.empty:
            return SeriesFilter(empty=True)
        mod = self.modality or other.modality
        if self.modality and other.modality and self.modality != other.modality:
            return SeriesFilter(empty=True)
        date = self.study_date
        if self.study_date and other.study_date:
            a0, a1 = parse_study_date(self.study_date)
            b0, b1 = parse_study_date(other.study_date)
            starts = [d for d in (a0, b0) if d]
            ends = [d for d in (a1, b1) if d]
            start, end = (max(starts) if starts else None), (min(ends) if ends else None)
            if start and end and start > end:
                return SeriesFilter(empty=True)
            date = _format_range(start, end)
        elif other.study_date:
            date = other.study_date
        return SeriesFilter(mod, date, other.description or self.description)

    def matches(self, record: Any) -> bool:
        """Whether an `ImageRecord` (modality, metadata study_date / series_description, name) matches."""
        if self.empty:
            return False
        meta = getattr(record, "metadata", None) or {}
        if self.modality and str(getattr(record, "modality", "") or "").upper() != self.modality:
            return False
        if self.study_date:
            date = str(meta.get("study_date") or "").strip()
            if not re.fullmatch(r"\d{8}", date):
                return False
            start, end = parse_study_date(self.study_date)
            if (start and date < start) or (end and date > end):
                return False
        if self.description:
            text = str(meta.get("series_description") or "").strip() or str(getattr(record, "name", "") or "")
            if not description_matches(self.description, text):
                return False
        return True


def description_matches(pattern: str, text: str) -> bool:
    """DICOM-style matching, case-insensitive: wildcards ``*``/``?`` over the whole text, else
    the pattern anywhere in the text."""
    p, t = pattern.lower(), text.lower()
    if "*" in p or "?" in p:
        return fnmatch.fnmatchcase(t, p.replace("[", "[[]"))
    return p in t
