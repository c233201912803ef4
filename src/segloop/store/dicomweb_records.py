"""How a PACS series appears as an image of the DICOMweb datastore
(`segloop.store.dicomweb_store`).

* Its **image id** is stable: ``dw-`` + 16 hex of the SHA-1 of its SeriesInstanceUID
  (`series_image_id`).
* **Before it is fetched** its record comes from the QIDO-RS answer alone (`virtual_record`:
  ``metadata["fetched"] = False``, shape ``(0, 0, instances)``, identity affine, no label).
* **Once fetched** its record is the local store's, named as the PACS describes it
  (`shown_record`: ``metadata["fetched"] = True``).

Non-image series (SEG, RTSTRUCT, SR, PR, ...: `NON_IMAGE_MODALITIES`) are not images.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from segloop.store.dicomweb import SeriesInfo
from segloop.store.records import ImageRecord

ID_PREFIX = "dw-"
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"})
_IDENTITY = tuple(tuple(float(v) for v in row) for row in np.eye(4))


def series_image_id(series_uid: str) -> str:
    """The stable image id of a DICOMweb series."""
    return ID_PREFIX + hashlib.sha1(series_uid.encode()).hexdigest()[:16]


def virtual_record(s: SeriesInfo, url: str) -> ImageRecord:
    """The record of a series listed by the DICOMweb server at ``url``, from its QIDO-RS answer."""
    date = s.study_date
    try:
        created = datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC) if date else datetime.now(UTC)
    except ValueError:
        created = datetime.now(UTC)
    return ImageRecord(
        id=series_image_id(s.series_uid),
        name=s.description or f"{s.modality or 'series'} {s.series_uid[-12:]}",
        source=f"dicomweb:{s.study_uid}/{s.series_uid}",
        modality=s.modality or "unknown",
        shape=(0, 0, int(s.instances or 0)),
        spacing=(0.0, 0.0, 0.0),
        affine=_IDENTITY,
        channels=1,
        metadata={
            "fetched": False,
            "study_uid": s.study_uid,
            "series_uid": s.series_uid,
            "study_date": s.study_date,
            "series_description": s.description,
            "instances": s.instances,
            "dicomweb_url": url,
        },
        created_at=created,
    )


def shown_record(record: ImageRecord) -> ImageRecord:
    """A local record of a fetched series, named as the PACS describes it (others unchanged)."""
    if not record.id.startswith(ID_PREFIX):
        return record
    meta = dict(record.metadata)
    meta["fetched"] = True
    name = str(meta.get("display_name") or meta.get("series_description") or record.name)
    return replace(record, name=name, metadata=meta)


def flag_unreachable(record: ImageRecord) -> ImageRecord:
    """The record listed while the PACS could not be asked (``metadata["pacs_unreachable"]``)."""
    return replace(record, metadata={**record.metadata, "pacs_unreachable": True})
