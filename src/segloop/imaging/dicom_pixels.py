"""Decoding DICOM pixel data and stacking it into a volume's array.

Which transfer syntaxes an installed decoder handles (`_decoder_problem`, checked at scan time),
reading a file whole, decoding its pixels (a fast path for plain little-endian monochrome
slices, pydicom for the rest, errors naming the transfer syntax), the rescale slope/intercept,
and stacking 2-D planes into ``(columns, rows, slices)`` with the rescale applied (see "Pixel
values" in `segloop.imaging.dicom`). Also nibabel's reader for Siemens mosaics.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from segloop.imaging.dicom_header import _sop_name
from segloop.imaging.errors import ImagingError


@functools.lru_cache(maxsize=64)
def _decoder_problem(ts: UID) -> str | None:
    """A message when no installed decoder handles transfer syntax ``ts``."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"pixel data uses transfer syntax {ts.name} ({ts}), which pydicom cannot decode"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return (
            f"pixel data uses transfer syntax {ts.name} ({ts}) and no decoder plugin is installed ({missing})"
        )
    return None


def _read_full(path: Path) -> Dataset:
    try:
        with open(path, "rb") as fh:
            has_preamble = fh.read(132)[128:132] == b"DICM"
        return pydicom.dcmread(path, force=not has_preamble)
    except Exception as exc:
        raise ImagingError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc


def _is_decode_error(exc: Exception) -> bool:
    return not isinstance(exc, (ImagingError, MemoryError))


def _decode_message(ts: UID | None, exc: Exception) -> str:
    syntax = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
    return f"cannot decode pixel data (transfer syntax {syntax}): {type(exc).__name__}: {exc}"


def _decode(path: Path, ds: Dataset | None = None) -> np.ndarray:
    """The raw stored values of ``path`` (or of its data set ``ds`` read already): ``(rows,
    cols[, 3])`` or ``(frames, rows, cols[, 3])``."""
    if ds is None:
        ds = _read_full(path)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImagingError(path, f"DICOM image ({_sop_name(ds)}) has no pixel data")
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta else None
    plain = _plain_pixels(ds)
    if plain is not None:
        return plain
    try:
        # native pixel data: a read-only view of the element's bytes (the caller copies it into
        # the volume anyway), instead of pydicom's extra writeable copy; the values are the same
        ds.pixel_array_options(view_only=True)
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImagingError(path, _decode_message(ts, exc)) from exc


_PLAIN_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _plain_pixels(ds: Dataset) -> np.ndarray | None:
    """The pixels of the simplest and commonest case read straight from the element's bytes (a
    read-only view): one frame, one sample, little-endian native syntax, 8/16/32 bits all used
    (BitsStored == BitsAllocated: no unused bits to mask or sign-extend), monochrome. Exactly
    what pydicom's ``pixel_array`` returns for it, without its per-call overhead (~2 ms a slice);
    ``None`` for anything else (pydicom decodes it)."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _PLAIN_SYNTAXES:
        return None
    try:
        data = ds.get("PixelData")
        bits = int(ds.get("BitsAllocated", 0) or 0)
        stored = int(ds.get("BitsStored", 0) or 0)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        signed = int(ds.get("PixelRepresentation", 0) or 0)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    except (TypeError, ValueError):
        return None
    if (not isinstance(data, bytes) or bits not in (8, 16, 32) or stored != bits or samples != 1 or frames != 1
            or signed not in (0, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2") or rows < 1 or cols < 1
            or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = rows * cols
    if len(data) < count * dtype.itemsize:
        return None  # short pixel data: pydicom's message
    return np.frombuffer(data, dtype=dtype, count=count).reshape(rows, cols)


def _stack_and_rescale(
    planes: Sequence[np.ndarray], slopes: Sequence[float], intercepts: Sequence[float]
) -> np.ndarray:
    """Stack 2-D planes ``(rows, cols[, 3])`` into ``(cols, rows, slices[, 3])`` with rescale applied.

    Grey-level volumes are built in Fortran order: each plane (rows x cols, C order) is then one
    contiguous block of the array, and the NIfTI file (Fortran order too) is written without a
    transposing copy. The values and dtype are those of stacking then rescaling the whole array."""
    if not planes or planes[0].ndim != 2:
        return _stack_and_rescale_c(planes, slopes, intercepts)
    slope = np.asarray(slopes, dtype=np.float64)
    inter = np.asarray(intercepts, dtype=np.float64)
    raw = np.result_type(*planes)
    rows, cols = planes[0].shape
    shape = (cols, rows, len(planes))

    def fill(dtype: Any, value: Any) -> np.ndarray:
        out = np.empty(shape, dtype=dtype, order="F")
        for k, plane in enumerate(planes):
            out[:, :, k] = value(k, plane).T
        return out

    if np.all(slope == 1) and np.all(inter == 0):
        return fill(raw, lambda k, p: p)
    integral = np.all(slope == np.round(slope)) and np.all(inter == np.round(inter))
    if integral and np.issubdtype(raw, np.integer):
        s64, i64 = slope.astype(np.int64), inter.astype(np.int64)
        lo, hi = 0, 0
        if planes[0].size:
            ends = []
            for k, p in enumerate(planes):  # a plane's extremes are those of its stored values
                ends += [int(p.min()) * int(s64[k]) + int(i64[k]), int(p.max()) * int(s64[k]) + int(i64[k])]
            lo, hi = min(ends), max(ends)
        dtype: Any = np.int64
        for candidate in (np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                dtype = candidate
                break
        # Integer arithmetic in the result's own type: numpy wraps modulo 2**bits, and every
        # exact result lies in that type's range (checked above), so the wrapped result is the
        # exact one — as computing in int64 then narrowing, in one pass over narrow data.
        out = np.empty(shape, dtype=dtype, order="F")
        wrap = np.iinfo(dtype).bits
        for k, plane in enumerate(planes):
            dst = out[:, :, k].T
            np.copyto(dst, plane, casting="unsafe")
            if s64[k] != 1:
                np.multiply(dst, _wrapped(int(s64[k]), wrap, dtype), out=dst, casting="unsafe")
            if i64[k] != 0:
                np.add(dst, _wrapped(int(i64[k]), wrap, dtype), out=dst, casting="unsafe")
        return out
    return fill(np.float32, lambda k, p: (p.astype(np.float64) * slope[k] + inter[k]).astype(np.float32))


def _wrapped(value: int, bits: int, dtype: Any) -> Any:
    """``value`` modulo ``2**bits`` as a scalar of the signed integer ``dtype``."""
    value %= 1 << bits
    if value >= 1 << (bits - 1):
        value -= 1 << bits
    return np.dtype(dtype).type(value)


def _stack_and_rescale_c(
    planes: Sequence[np.ndarray], slopes: Sequence[float], intercepts: Sequence[float]
) -> np.ndarray:
    """`_stack_and_rescale` for colour planes (``(rows, cols, 3)``): a C-ordered array."""
    stacked = np.stack([np.swapaxes(p, 0, 1) for p in planes], axis=2)
    slope = np.asarray(slopes, dtype=np.float64)
    inter = np.asarray(intercepts, dtype=np.float64)
    if np.all(slope == 1) and np.all(inter == 0):
        return np.ascontiguousarray(stacked)
    shape = (1, 1, len(planes)) + (1,) * (stacked.ndim - 3)
    integral = np.all(slope == np.round(slope)) and np.all(inter == np.round(inter))
    if integral and np.issubdtype(stacked.dtype, np.integer):
        values = stacked.astype(np.int64) * slope.astype(np.int64).reshape(shape) + inter.astype(
            np.int64
        ).reshape(shape)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return values.astype(dtype)
        return values
    return (stacked.astype(np.float64) * slope.reshape(shape) + inter.reshape(shape)).astype(np.float32)


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def _dicomwrappers() -> Any:
    """``nibabel.nicom.dicomwrappers``, imported without its "experimental" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers
    return dicomwrappers
