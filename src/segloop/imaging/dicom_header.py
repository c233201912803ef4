"""One DICOM instance's header, read from a file or from bytes, and whether it is an image.

`read_dicom_header` reads a file without its pixel data; `header_from_bytes` parses an instance
held in memory (a WADO-RS part) whole and notes where its pixel data starts. `non_image_reason`
says why an object (SEG, RTSTRUCT, SR, PR, ...) is skipped rather than imported as an image; the
rules are in `segloop.imaging.dicom`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from segloop.imaging.errors import ImagingError

SEG_REASON = "DICOM Segmentation (SEG) — not an image; a label of the series it references (segloop import-seg)"
"""Why a SEG is skipped as an image; `segloop import` then imports it as a label revision."""

_NON_IMAGE_SOP: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": SEG_REASON,
    "1.2.840.10008.5.1.4.1.1.66.7": "DICOM Label Map Segmentation — not an image; segloop does not import label map SEGs yet",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set (RTSTRUCT) — contours, not an image",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose (RTDOSE) — a dose grid, not an anatomical image",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan (RTPLAN) — not an image",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan — not an image",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data — not an image",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration (REG) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials (FID) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration (REG) — not an image",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation — not an image",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping — not an image",
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory index) — not an image; its images are read from their own files",
}
_NON_IMAGE_SOP_PREFIX: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88.", "Structured Report (SR) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.11.", "Presentation State (PR) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.9.", "Waveform (ECG/audio) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.104.", "Encapsulated document (PDF/CDA/STL) — not an image"),
    ("1.2.840.10008.5.1.4.1.1.481.", "RT treatment object — not an image"),
)
_NON_IMAGE_MODALITY: dict[str, str] = {
    "SEG": SEG_REASON,
    "RTSTRUCT": "RT Structure Set (RTSTRUCT) — contours, not an image",
    "RTDOSE": "RT Dose (RTDOSE) — a dose grid, not an anatomical image",
    "RTPLAN": "RT Plan (RTPLAN) — not an image",
    "RTRECORD": "RT treatment record — not an image",
    "SR": "Structured Report (SR) — not an image",
    "PR": "Presentation State (PR) — not an image",
    "KO": "Key Object Selection (KO) — not an image",
    "DOC": "Encapsulated document (DOC) — not an image",
    "REG": "Spatial Registration (REG) — not an image",
    "FID": "Spatial Fiducials (FID) — not an image",
    "ECG": "Waveform (ECG) — not an image",
}


def looks_like_dicom(path: Path) -> bool:
    """Cheap test on the first bytes: a ``DICM`` marker at byte 128, or a raw (preamble-less)
    data set starting with a group 0x0002 or 0x0008 tag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


@dataclass
class DicomHeader:
    """A DICOM file's header (no pixel data) and what was learned about it."""

    path: Path
    dataset: Dataset
    has_pixel_data: bool
    pixel_offset: int | None = None
    """For an instance read from memory (`header_from_bytes`): where its pixel data element
    starts, so ``data[:pixel_offset]`` is the instance without pixels, as ``stop_before_pixels``
    reads it (``None``: unknown, e.g. deflated)."""

    @property
    def transfer_syntax(self) -> UID:
        meta = getattr(self.dataset, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        return UID(str(ts)) if ts else UID("1.2.840.10008.1.2")


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read one file's header without its pixel data.

    Raises:
        ImagingError: the file is not DICOM, or its header cannot be parsed.
    """
    path = Path(path)
    if not looks_like_dicom(path):
        raise ImagingError(
            path, "not a DICOM file (no DICM marker at byte 128 and no DICOM tag at the start)"
        )
    try:
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
                    raise ImagingError(path, "not a DICOM file (no DICOM data set could be parsed)") from None
            # stop_before_pixels rewinds to the pixel data tag when there is one
            tag = fh.read(4)
    except ImagingError:
        raise
    except Exception as exc:  # pydicom raises many types on a corrupt header
        raise ImagingError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return DicomHeader(path, ds, True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
        # deflated: pydicom parsed an inflated copy, so the file position says nothing; read it all
        try:
            full = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise ImagingError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
        has = any(k in full for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        return DicomHeader(path, ds, has)
    has_pixels = len(tag) == 4 and (
        (tag[:2] == b"\xe0\x7f" and tag[2:] in (b"\x10\x00", b"\x08\x00", b"\x09\x00"))
        or (tag[:2] == b"\x7f\xe0" and tag[2:] in (b"\x00\x10", b"\x00\x08", b"\x00\x09"))
    )
    return DicomHeader(path, ds, has_pixels)


def non_image_reason(header: DicomHeader) -> str | None:
    """Why this DICOM object is not an image to import (``None`` when it is an image)."""
    ds = header.dataset
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    if sop in _NON_IMAGE_SOP:
        return _NON_IMAGE_SOP[sop]
    for prefix, reason in _NON_IMAGE_SOP_PREFIX:
        if sop.startswith(prefix) and sop != "1.2.840.10008.5.1.4.1.1.481.1":  # 481.1 is RT Image
            return reason
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _NON_IMAGE_MODALITY:
        return _NON_IMAGE_MODALITY[modality]
    is_image_class = UID(sop).name.endswith("Image Storage") if sop else False
    if (
        not header.has_pixel_data
        and not is_image_class
        and "Rows" not in ds
        and "DirectoryRecordSequence" not in ds
    ):
        name = UID(sop).name if sop else "unknown SOP class"
        return f"DICOM object without image data ({name}) — not an image"
    if "DirectoryRecordSequence" in ds:
        return _NON_IMAGE_SOP["1.2.840.10008.1.3.10"]
    return None


def header_from_bytes(path: Path, data: bytes) -> DicomHeader:
    """One in-memory DICOM instance parsed whole (pixel data included, decoded later), as a
    `DicomHeader` named ``path``.

    Raises:
        ImagingError: not DICOM, or unparsable.
    """
    has_preamble = data[128:132] == b"DICM"
    if not has_preamble and data[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        raise ImagingError(path, "not a DICOM instance (no DICM marker at byte 128 and no DICOM tag at the start)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on a corrupt instance
        raise ImagingError(path, f"unreadable DICOM instance ({type(exc).__name__}: {exc})") from exc
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return DicomHeader(path, ds, has_pixels, pixel_offset=_pixel_offset(data, ds))


_SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL",
                        "SS", "ST", "TM", "UI", "UL", "US"})


def _pixel_offset(data: bytes, ds: Dataset) -> int | None:
    """The byte offset in ``data`` of the top-level pixel data element of ``ds`` (parsed from
    ``data``, its pixel element not accessed yet); ``len(data)`` without pixel data; ``None``
    where it is not known (deflated transfer syntax)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
        return None
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # PixelData, FloatPixelData, DoubleFloatPixelData
        if tag not in ds:
            continue
        raw = ds.get_item(tag)
        value_tell = getattr(raw, "value_tell", None)
        if value_tell is None:
            return None
        implicit = bool(getattr(raw, "is_implicit_VR", False))
        vr = str(getattr(raw, "VR", "") or "")
        start = int(value_tell) - (8 if implicit or vr in _SHORT_VRS else 12)
        group, elem = tag >> 16, tag & 0xFFFF
        little = bool(getattr(raw, "is_little_endian", True))
        order: Literal["little", "big"] = "little" if little else "big"
        if start <= 0 or data[start:start + 4] != group.to_bytes(2, order) + elem.to_bytes(2, order):
            return None
        return start
    return len(data)


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _sop_name(ds: Dataset) -> str:
    sop = _str(ds, "SOPClassUID")
    return UID(sop).name if sop else "blank SOP class"
