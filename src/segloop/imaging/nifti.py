"""Reading and writing NIfTI-1/2 (``.nii``, ``.nii.gz``) with nibabel."""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file fully (the data is decoded now, so a truncated file fails here).

    Raises:
        ImagingError: the file is not a readable NIfTI volume, is truncated, or is not 3-D/4-D.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImagingError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
        data = np.asarray(img.dataobj)
    except ImagingError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError) as exc:
        raise ImagingError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ImagingError(path, f"expected a 3-D or 4-D volume, got shape {data.shape}")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImagingError(path, "the header's affine is missing or singular")
    header = img.header
    meta = {
        "format": "nifti",
        "source_path": str(path),
        "description": header.get("descrip", b"").tobytes().decode("latin-1").strip("\x00 ") if "descrip" in header else "",
    }
    return Volume(data, affine, meta)


def read_nifti_channels(paths: Sequence[str | Path]) -> Volume:
    """One image from one NIfTI file per channel, as nnU-Net's raw layout stores it
    (``NAME_0000.nii.gz``, ``NAME_0001.nii.gz``, ...): the channels in the given order, stacked on
    the last axis (``(X, Y, Z, C)``). A single path reads that file as it is (3-D or 4-D).

    Raises:
        ImagingError: no path; a file unreadable or not 3-D; a channel not on the first one's grid.
    """
    if not paths:
        raise ImagingError(Path("."), "no channel files given")
    if len(paths) == 1:
        return read_nifti(paths[0])
    volumes = []
    for path in paths:
        vol = read_nifti(path)
        if vol.array.ndim != 3:
            raise ImagingError(Path(path), f"a channel file must hold one 3-D volume, got shape {vol.array.shape}")
        volumes.append(vol)
    first = volumes[0]
    arrays = [first.array]
    for path, vol in zip(paths[1:], volumes[1:], strict=True):
        if not first.same_grid(vol):
            raise ImagingError(Path(path), f"channel grid {vol.shape} {np.round(vol.affine, 4).tolist()} does not match "
                                           f"{Path(paths[0]).name}'s {first.shape} {np.round(first.affine, 4).tolist()}")
        arrays.append(vol.array)
    dtype = np.result_type(*arrays)
    return first.with_array(np.stack([a.astype(dtype, copy=False) for a in arrays], axis=-1),
                            channel_files=[Path(p).name for p in paths])


def write_nifti(
    volume: Volume,
    path: str | Path,
    dtype: np.dtype | type | None = None,
    *,
    compresslevel: int | None = None,
    durable: bool = True,
) -> Path:
    """Write ``volume`` to ``path`` atomically (temporary file in the same folder, then rename).

    Args:
        compresslevel: gzip level for a ``.nii.gz`` path (default: nibabel's, 1). ``0`` writes
            stored (uncompressed) gzip blocks: still a ``.nii.gz`` every reader opens, at the
            cost of a copy instead of deflating (a 105 MB CT: ~0.2 s instead of ~2.5 s).
        durable: fsync the file before the rename (off for caches that can be rebuilt).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if data.dtype == np.bool_:  # NIfTI has no boolean type
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, volume.affine)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    gz = str(path).lower().endswith(".gz")
    suffix = ".nii.gz" if gz else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        pieces = _image_pieces(img, data) if gz and compresslevel == 0 else None
        if pieces is not None:
            _write_stored_gzip(tmp, pieces)
        elif gz and compresslevel is not None:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel,
                                                        mtime=0) as fh:
                fh.write(img.to_bytes())
        else:
            nib.save(img, tmp)
        if durable:
            with open(tmp, "rb") as fh2:
                os.fsync(fh2.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _image_pieces(img: nib.Nifti1Image, data: np.ndarray) -> list[memoryview] | None:
    """``img`` (holding ``data``) as a single NIfTI-1 file, in pieces without copying the voxels:
    the header as nibabel writes it for unscaled data (its vox_offset, scl_slope 1, scl_inter 0),
    then ``data``'s memory. ``None`` where the voxels are not stored as they are in memory (not
    Fortran-ordered, another dtype, scaled): use nibabel's bytes then."""
    header = img.header.copy()
    slope, inter = header["scl_slope"], header["scl_inter"]
    if not (data.flags.f_contiguous and data.dtype.isnative and data.dtype == header.get_data_dtype()
            and (np.isnan(slope) or slope == 1) and (np.isnan(inter) or inter == 0)
            and not header.extensions):
        return None
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # what nibabel's writer records for unscaled data
    head = io.BytesIO()
    header.write_to(head)  # sets vox_offset (352) when unset
    block = head.getvalue()
    offset = int(header.get_data_offset())
    if len(block) > offset:
        return None
    return [memoryview(block + b"\0" * (offset - len(block))), data.reshape(-1, order="F").data.cast("B")]


def _write_stored_gzip(path: str | Path, pieces: list[memoryview]) -> None:
    """A gzip file (RFC 1952) of the concatenated ``pieces`` in stored (uncompressed) deflate
    blocks, written with ``writev`` straight from the pieces' memory: what gzip level 0 gives,
    without its copies (a 105 MB CT in ~0.15 s instead of ~0.7 s)."""
    crc, size = 0, 0
    iov: list[bytes | memoryview] = []
    blocks: list[memoryview] = []
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        size += len(piece)
        blocks.extend(piece[i:i + 65535] for i in range(0, len(piece), 65535))
    with open(path, "wb") as fh:
        fd = fh.fileno()
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip header: deflate, no name, mtime 0
        fh.flush()
        if not blocks:
            blocks = [memoryview(b"")]
        for n, blk in enumerate(blocks):
            final = 1 if n == len(blocks) - 1 else 0
            length = len(blk)
            iov.append(bytes((final,)) + length.to_bytes(2, "little") + (length ^ 0xFFFF).to_bytes(2, "little"))
            iov.append(blk)
            if len(iov) >= 512 or final:
                _writev_all(fd, iov)
                iov = []
        os.write(fd, crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))


def _writev_all(fd: int, iov: list[bytes | memoryview]) -> None:
    while iov:
        written = os.writev(fd, iov)
        while iov and written >= len(iov[0]):
            written -= len(iov[0])
            iov = iov[1:]
        if iov and written:
            iov[0] = memoryview(iov[0])[written:]


def nifti_bytes(volume: Volume, dtype: np.dtype | type | None = None) -> bytes:
    """The volume as gzip-compressed NIfTI-1 bytes (for HTTP responses)."""
    data = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    img = nib.Nifti1Image(data, volume.affine)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1)
