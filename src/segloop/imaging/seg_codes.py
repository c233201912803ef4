"""What describes a segment of a DICOM Segmentation: SOP classes, property codes, `SegmentInfo`.

Segmented property codes follow `segment_codes`: a class name that is the meaning of a concept in
the DICOM segmentation-type context groups (CID 7166 tissue, CID 7159 lesion, CID 7192 anatomical
structure, CID 7157/7158 physical objects) gets that SCT concept as its type and the group's
category (Tissue, Morphologically Abnormal Structure, Anatomical Structure, Physical Object); any
other name gets the generic category and type "Tissue" (SCT 85756007), as dcmqi does for unnamed
segments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.sr.coding import Code

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"

ClassSpec = tuple[int, str, tuple[int, int, int]]
"""A label class as ``(value, name, (r, g, b))``; value 0 is background."""
CodePair = tuple[Code, Code]
"""``(segmented property category, segmented property type)``."""

TISSUE = Code("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
AI_FAMILY = Code("123110", "DCM", "Artificial Intelligence")
"""Algorithm family (CID 7162) recorded for model-made segments."""
GENERIC_CODES: CodePair = (TISSUE, TISSUE)
"""Category and type for a class whose name is not a known concept."""

# (context group, category) in the order they are searched.
_CODE_GROUPS: tuple[tuple[str, Code], ...] = (
    ("cid7166", TISSUE),
    ("cid7159", ABNORMAL_STRUCTURE),
    ("cid7192", ANATOMICAL_STRUCTURE),
    ("cid7157", PHYSICAL_OBJECT),
    ("cid7158", PHYSICAL_OBJECT),
)


def _norm_name(text: str) -> str:
    """``"Left_Kidney"``, ``"left kidney"``, ``"LeftKidney"`` -> ``"leftkidney"``."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@lru_cache(maxsize=1)
def _known_codes() -> dict[str, CodePair]:
    from pydicom.sr.codedict import codes

    table: dict[str, CodePair] = {}
    for cid, category in _CODE_GROUPS:
        group = getattr(codes, cid)
        for keyword in group.dir():
            code = getattr(group, keyword)
            if code.scheme_designator != "SCT":
                continue
            for key in (_norm_name(code.meaning), _norm_name(keyword)):
                table.setdefault(key, (category, code))
    return table


def segment_codes(name: str) -> CodePair:
    """The segmented property category and type for a class called ``name`` (module rule)."""
    return _known_codes().get(_norm_name(name), GENERIC_CODES)


def rgb_triplet(value: Sequence[Any]) -> tuple[int, int, int]:
    """``value`` as an ``(r, g, b)`` tuple of ints."""
    r, g, b = (int(c) for c in value)
    return (r, g, b)


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a SEG, as read or written.

    Attributes:
        number: SegmentNumber (1..N).
        label: SegmentLabel (the class name when segloop wrote it).
        color: RGB from the recommended display CIELab value, ``None`` when absent.
        category, type: segmented property category and type codes.
        value: the label-map value this segment was written from (writing) or is read as
            (reading: equal to ``number``).
        voxels: voxels covered by this segment (before overlap resolution when reading).
    """

    number: int
    label: str
    color: tuple[int, int, int] | None
    category: Code
    type: Code
    value: int
    voxels: int
