"""The first image of a PACS series before the series is here (issue 17): its middle slice,
fetched alone.

A cold first view waits for the whole series (one WADO-RS request, every instance parsed and
decoded). The viewer can show something much sooner: the slice in the middle of the stack, found
from QIDO-RS (each instance's ImagePositionPatient projected on the slice normal; InstanceNumber
where positions are not listed) — the whole instance listing for a short series, five instances
of it for a long one (`fetch_preview`) — and retrieved alone with WADO-RS in its stored transfer
syntax, then read with the same rules and voxels as a local import (`read_dicom_parts`): a
one-slice `Volume` with its exact world geometry.

A multi-frame series (one instance holding every slice) has no single slice to fetch; the caller
then takes the middle slice of the whole series (`segloop.imaging.volume.middle_slice`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segloop.imaging.dicom_geometry import slice_normal
from segloop.imaging.dicom_read import read_dicom_parts
from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume, middle_slice
from segloop.store.dicomweb import WADO_ACCEPT, DicomWebSource, MultipartSplitter
from segloop.store.dicomweb_http import PacsError

_SOP_UID = "00080018"
_INSTANCE_NUMBER = "00200013"
_POSITION = "00200032"
_ORIENTATION = "00200037"
_FRAMES = "00280008"
PREVIEW_FIELDS = (_SOP_UID, _INSTANCE_NUMBER, _POSITION, _ORIENTATION, _FRAMES)


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    entry = item.get(tag)
    if not isinstance(entry, dict):
        return []
    value = entry.get("Value")
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def middle_instance(listing: Sequence[dict[str, Any]]) -> tuple[str, float | None] | None:
    """The SOPInstanceUID of the slice in the middle of a series, from its QIDO-RS instance
    listing (DICOM JSON, one dict per instance), and the distance in mm to its neighbour along
    the slice normal (``None`` where positions are not listed or there is one slice); ``None``
    for a multi-frame instance or an empty listing.

    Order: the position along the slice normal when every instance lists ImagePositionPatient
    and one ImageOrientationPatient; else InstanceNumber where every instance has one; else the
    listing's order. The middle is element ``n // 2`` of that order (the slice a 2-D preview of
    the whole volume shows).
    """
    items = [i for i in listing if _values(i, _SOP_UID)]
    if not items:
        return None
    if len(items) == 1 and (_number((_values(items[0], _FRAMES) or [1])[0]) or 1) > 1:
        return None
    keys, in_mm = _keys(items)
    order = list(range(len(items))) if keys is None else sorted(range(len(items)), key=lambda k: keys[k])
    mid = len(order) // 2
    step: float | None = None
    if keys is not None and in_mm and len(order) > 1:
        near = order[mid - 1] if mid > 0 else order[mid + 1]
        step = abs(keys[order[mid]] - keys[near]) or None
    return str(_values(items[order[mid]], _SOP_UID)[0]), step


SAMPLED_ABOVE = 12
"""Series with more instances than this are not listed whole: see `fetch_preview`."""
SAMPLE_AT = (0.1, 0.3, 0.5, 0.7, 0.9)


def _keys(items: Sequence[dict[str, Any]]) -> tuple[list[float] | None, bool]:
    """Each item's place in the stack: its position along the slice normal (``True``: these
    are positions in mm), else its InstanceNumber, else ``None``."""
    positions = [[_number(v) for v in _values(i, _POSITION)] for i in items]
    orientations = {tuple(_number(v) for v in _values(i, _ORIENTATION)) for i in items}
    if len(orientations) == 1 and all(len(p) == 3 and None not in p for p in positions):
        (o,) = orientations
        if len(o) == 6 and None not in o:
            normal = slice_normal(np.array(o, dtype=float))
            return [float(np.dot(normal, np.array(p, dtype=float))) for p in positions], True
    numbers = [_number((_values(i, _INSTANCE_NUMBER) or [None])[0]) for i in items]
    if None not in numbers:
        return [float(n) for n in numbers if n is not None], False
    return None, False


def sampled_middle(samples: Sequence[tuple[int, dict[str, Any]]], middle: int) -> tuple[str, float | None] | None:
    """The middle slice from a few instances of a long listing: ``samples`` are (offset in the
    listing, instance) in offset order and include ``middle`` (``n // 2``). When their places
    (`_keys`) rise or fall with the offset, the listing is in stack order and the instance at
    ``middle`` is the middle slice (its spacing: the places' step per offset, in mm); otherwise
    the sample in the middle of the samples' places (near the middle of the stack)."""
    if not samples:
        return None
    items = [item for _, item in samples]
    keys, in_mm = _keys(items)
    at = next((k for k, (offset, _) in enumerate(samples) if offset == middle), len(samples) // 2)
    step: float | None = None
    if keys is not None:
        diffs = np.diff(keys)
        ordered = bool(len(diffs)) and (bool(np.all(diffs > 0)) or bool(np.all(diffs < 0)))
        if ordered and in_mm:
            near = at - 1 if at > 0 else at + 1
            if 0 <= near < len(samples):
                step = abs(keys[at] - keys[near]) / max(abs(samples[at][0] - samples[near][0]), 1) or None
        elif not ordered:
            at = sorted(range(len(keys)), key=lambda k: keys[k])[len(keys) // 2]
    uids = _values(items[at], _SOP_UID)
    return (str(uids[0]), step) if uids else None


def _search(source: DicomWebSource, what: str, path: str) -> list[dict[str, Any]]:
    operation = f"QIDO-RS instance search of {what}"
    response = source.link.get(operation, path, headers={"Accept": "application/dicom+json"})
    try:
        found = response.json() if response.content else []
    except ValueError as exc:
        raise PacsError(source.url, operation, f"the answer is not DICOM JSON ({exc})") from exc
    if not isinstance(found, list):
        raise PacsError(source.url, operation, "the answer is not a list of instances")
    return found


def fetch_preview(
    source: DicomWebSource, study_uid: str, series_uid: str, instances: int | None = None
) -> Volume | None:
    """The middle slice of a series on ``source`` as a one-slice `Volume`; ``None`` when the
    series is one multi-frame instance (no single slice to fetch).

    ``instances``: how many the series listing announced. Up to `SAMPLED_ABOVE` (or unknown),
    the instances are listed whole with their positions (`middle_instance`). A longer series is
    not: a PACS may read every instance's file to list it (Orthanc 1.10: 0.3 s for 200, more
    than retrieving the series), so five instances at 10 %, 30 %, 50 %, 70 % and 90 % of the
    listing are asked for (``limit=1&offset=k``, at once) and `sampled_middle` picks from
    them. Then one WADO-RS retrieval of the chosen instance, in its stored transfer syntax and
    without HTTP compression (a PACS that gzips a 0.5 MB instance spends 50 ms on it).

    Raises:
        PacsError: the PACS is unreachable, answers an error, or lists no instance.
        ImagingError: the instance cannot be read as an image.
    """
    what = f"study {study_uid} series {series_uid}"
    fields = "&".join(f"includefield={t}" for t in PREVIEW_FIELDS[1:])
    base = f"/studies/{study_uid}/series/{series_uid}/instances?{fields}"
    chosen: tuple[str, float | None] | None
    if instances is None or instances <= SAMPLED_ABOVE:
        listing = _search(source, what, base)
        if not listing:
            raise PacsError(source.url, f"QIDO-RS instance search of {what}",
                            "the PACS lists no instance in this series", code="pacs_incomplete")
        chosen = middle_instance(listing)
    else:
        offsets = sorted({min(instances - 1, round(instances * f)) for f in SAMPLE_AT} | {instances // 2})
        with ThreadPoolExecutor(len(offsets), thread_name_prefix="pacs-preview") as pool:
            found = list(pool.map(lambda k: _search(source, what, f"{base}&limit=1&offset={k}"), offsets))
        if any(len(f) > 1 for f in found):  # the PACS ignored limit/offset: a whole listing
            chosen = middle_instance(max(found, key=len))
        else:
            chosen = sampled_middle([(k, f[0]) for k, f in zip(offsets, found, strict=True) if f], instances // 2)
        if chosen is None:
            raise PacsError(source.url, f"QIDO-RS instance search of {what}",
                            "the PACS lists no instance in this series", code="pacs_incomplete")
    if chosen is None:
        return None
    sop, step = chosen
    operation = f"WADO-RS retrieval of instance {sop} of {what}"
    response = source.link.get(operation, f"/studies/{study_uid}/series/{series_uid}/instances/{sop}",
                               headers={"Accept": WADO_ACCEPT, "Accept-Encoding": "identity"})
    try:
        splitter = MultipartSplitter(response.headers.get("Content-Type", ""))
    except ValueError as exc:
        raise PacsError(source.url, operation, str(exc)) from exc
    parts = splitter.feed(response.content) + splitter.close()
    if len(parts) != 1:
        raise PacsError(source.url, operation, f"the PACS delivered {len(parts)} instances instead of one")
    where = f"instance {sop} of {what} at {source.url}"
    try:
        read = read_dicom_parts(parts, where)
    except ImagingError as exc:
        raise ImagingError(None, f"{where}: {exc.problem}") from exc
    volume = read.volume
    if volume.shape[2] != 1:  # a multi-frame instance after all
        volume = middle_slice(volume)
    elif step is not None:  # the series' slice spacing, not the one slice's thickness
        column = volume.affine[:3, 2]
        volume.affine[:3, 2] = column / max(float(np.linalg.norm(column)), 1e-12) * step
    volume.metadata.update({"study_uid": study_uid, "series_uid": series_uid, "preview_of": sop})
    volume.metadata.pop("source_paths", None)
    return volume
