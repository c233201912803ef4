"""Label maps as gzip NIfTI-1 bytes, fast — what every click, undo and redo sends back.

`label_nifti_gz` encodes one uint8 label map: the NIfTI header from nibabel, the voxels written
directly (nibabel's generic writer spends ~70 ms checking scaling on a 256x256x128 mask).

`IncrementalLabelEncoder` encodes the successive masks of one interactive session. A click
changes a box of one model patch; re-encoding the whole 8 MB mask (transpose to NIfTI's
x-fastest order and deflate: ~45 ms for 256x256x128) cost more than the click itself. The
encoder keeps the mask's bytes in file order cut into slabs of 8 z-slices, each deflated on its
own and ended with a full flush (byte-aligned, no back-references across slabs), so the slabs'
compressed bytes can be concatenated into one valid deflate stream. A new mask is compared with
the previous one 8 z-slices at a time (as uint64 words), and only the slabs that changed are
transposed and deflated again; the CRC-32 of the whole stream is recomputed (a few ms). The
result is one ordinary gzip member that any decoder reads (gzip, zlib, browsers'
``DecompressionStream``).
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from segloop.imaging.nifti import nifti_bytes
from segloop.imaging.volume import Volume

SLAB = 8  # z-slices per independently deflated slab (one uint64 word per (x, y) column)
INCREMENTAL_MIN_VOXELS = 2**20  # smaller masks encode whole in about a millisecond
LEVEL = 1
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final, empty fixed-Huffman block


def nifti_header(affine: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """The 352 bytes before the voxels of a uint8 NIfTI-1 file (header + empty extension flag)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), affine)
    hdr = img.header
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    hdr["scl_slope"] = np.nan
    hdr["scl_inter"] = np.nan
    return bytes(hdr.binaryblock) + b"\x00\x00\x00\x00"


def fortran_bytes(data: np.ndarray) -> bytes:
    """``data.tobytes(order="F")``, 3x faster on large 3-D arrays: the transpose is done in
    blocks of 32 along j, which keeps it in cache (45 ms → 14 ms for 256x256x128 uint8)."""
    if data.ndim != 3 or data.flags.f_contiguous:
        return data.tobytes(order="F")
    out = np.empty(data.shape[::-1], dtype=data.dtype)
    src = data.transpose(2, 1, 0)
    for j0 in range(0, data.shape[1], 32):
        out[:, j0 : j0 + 32, :] = src[:, j0 : j0 + 32, :]
    return out.tobytes()


def label_nifti_gz(label: Volume) -> bytes:
    """A label map as gzip NIfTI-1 (uint8 when its values fit, else nibabel's generic writer)."""
    data = np.asarray(label.array)
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            return nifti_bytes(label)
        data = data.astype(np.uint8)
    return gzip.compress(nifti_header(label.affine, data.shape) + fortran_bytes(data), compresslevel=LEVEL)


def _deflate_block(data: bytes | memoryview) -> bytes:
    co = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush(zlib.Z_FULL_FLUSH)


# CRC-32 of a concatenation from the parts' CRCs (zlib's crc32_combine, which Python's zlib
# lacks): crc(A + B) = Z(len B) . crc(A) xor crc(B), Z(n) being the GF(2) 32x32 matrix that feeds
# n zero bytes through the CRC register. Z is computed once per slab length, so combining the
# slabs' CRCs costs microseconds instead of a pass over the whole mask.


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def crc32_shift_operator(nbytes: int) -> list[int]:
    """The matrix (32 columns) that advances a CRC-32 over ``nbytes`` zero bytes."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    result = [1 << n for n in range(32)]
    n = 8 * int(nbytes)
    while n:
        if n & 1:
            result = [_gf2_times(odd, c) for c in result]
        odd = [_gf2_times(odd, c) for c in odd]
        n >>= 1
    return result


def crc32_combine(crc_a: int, crc_b: int, shift_b: list[int]) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and ``crc32_shift_operator(len(B))``."""
    return _gf2_times(shift_b, crc_a) ^ crc_b


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _slab_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="segloop-mask")
        return _pool


class IncrementalLabelEncoder:
    """gzip NIfTI-1 bytes of successive uint8 masks on one grid; only changed slabs are
    re-compressed (see the module docstring), several at once on a small thread pool.
    Thread-safe. It keeps a reference to the last mask it encoded: do not change a mask after
    passing it to `encode`."""

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.header = nifti_header(np.asarray(affine, dtype=np.float64), self.shape)
        x, y, z = self.shape
        self._plane = x * y
        self._slabs = [(z0, min(z, z0 + SLAB)) for z0 in range(0, z, SLAB)]
        self._blocks: list[bytes] = [b""] * len(self._slabs)
        self._crcs: list[int] = [0] * len(self._slabs)
        self._shift: dict[int, list[int]] = {}
        self._head_block = _deflate_block(self.header)
        self._head_crc = zlib.crc32(self.header)
        self._last: np.ndarray | None = None
        self._lock = threading.Lock()
        self.slabs_encoded = 0  # statistics: slabs deflated so far

    def _dirty(self, label: np.ndarray) -> list[int]:
        last = self._last
        if last is None:
            return list(range(len(self._slabs)))
        z = self.shape[2]
        full = (z // SLAB) * SLAB
        dirty: list[int] = []
        if full:
            a = label.reshape(self._plane, z)[:, :full]
            b = last.reshape(self._plane, z)[:, :full]
            if z == full:  # rows of whole words: compare 8 z-slices at a time
                words = np.not_equal(a.view(np.uint64), b.view(np.uint64)).any(axis=0)
            else:
                words = np.not_equal(a, b).reshape(self._plane, full // SLAB, SLAB).any(axis=(0, 2))
            dirty.extend(int(i) for i in np.flatnonzero(words))
        if full < z and not np.array_equal(label[:, :, full:], last[:, :, full:]):
            dirty.append(len(self._slabs) - 1)
        return dirty

    def _shift_for(self, nbytes: int) -> list[int]:
        op = self._shift.get(nbytes)
        if op is None:
            op = self._shift[nbytes] = crc32_shift_operator(nbytes)
        return op

    def encode(self, label: np.ndarray) -> bytes:
        data = np.ascontiguousarray(label)
        if data.shape != self.shape:
            raise ValueError(f"mask shape {data.shape} is not the session's {self.shape}")
        if data.dtype != np.uint8:
            data = data.astype(np.uint8)
        with self._lock:
            dirty = self._dirty(data)

            def encode_slab(i: int) -> None:
                z0, z1 = self._slabs[i]
                slab = fortran_bytes(data[:, :, z0:z1])
                self._blocks[i] = _deflate_block(slab)
                self._crcs[i] = zlib.crc32(slab)

            if len(dirty) > 1:
                # numpy's copies, deflate and crc32 release the GIL: slabs encode in parallel
                list(_slab_pool().map(encode_slab, dirty))
            else:
                for i in dirty:
                    encode_slab(i)
            self.slabs_encoded += len(dirty)
            self._last = data  # a reference: callers pass masks they no longer change (snapshots)
            crc = self._head_crc
            for (z0, z1), part in zip(self._slabs, self._crcs, strict=True):
                crc = crc32_combine(crc, part, self._shift_for((z1 - z0) * self._plane))
            size = len(self.header) + self._plane * self.shape[2]
            return b"".join(
                [_GZIP_HEADER, self._head_block, *self._blocks, _FINAL_EMPTY_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF)]
            )
