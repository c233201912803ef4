"""The fast paths of a PACS first view give exactly what the plain paths give:

* `read_dicom_parts` (instances in memory, parsed once) == `read_dicom_series` on the same files;
* the instances' headers cut before the pixel data == what ``stop_before_pixels`` reads;
* `_plain_pixels` == pydicom's ``pixel_array``; `_stack_and_rescale` (Fortran order, narrow
  integer arithmetic) == stacking then rescaling in int64/float64;
* `write_nifti(compresslevel=0)` (stored gzip blocks) == nibabel's file, decompressed;
* `MultipartSplitter` fed in any chunks == `split_multipart` on the whole body.
"""

from __future__ import annotations

import copy
import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from segloop.imaging.dicom import read_dicom_parts, read_dicom_series
from segloop.imaging.dicom_pixels import _plain_pixels, _stack_and_rescale, _stack_and_rescale_c
from segloop.imaging.errors import ImagingError
from segloop.imaging.nifti import _image_pieces, read_nifti, write_nifti
from segloop.imaging.volume import Volume
from segloop.store.dicomweb import MultipartSplitter, split_multipart

DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
SETS = [
    DICOM / "mr_brain_tcia_pgbm" / "Study1" / "12-T1post-05670",
    DICOM / "mr_brain_tcia_pgbm" / "Study3" / "11-T1post-18670",
    DICOM / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume",
    DICOM / "ct_totalsegmentator_example" / "example_ct_dicom",
    DICOM / "ct_seg_dcmqi" / "ct-3slice",
    *[DICOM / "transfer_syntaxes_dcm_qa_ts" / "In" / f"{i}.dcm" for i in range(1, 10)],
]


def _nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


@pytest.mark.parametrize("path", SETS, ids=lambda p: p.name)
def test_parts_in_memory_read_as_the_files(path: Path) -> None:
    files = _files(path)
    expected = read_dicom_series(path)
    parts = [f.read_bytes() for f in reversed(files)]  # arrival order does not matter
    read = read_dicom_parts(iter(parts))
    assert read.volume.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(read.volume.array, expected.array)
    np.testing.assert_allclose(read.volume.affine, expected.affine)
    assert read.volume.metadata["series_uid"] == expected.metadata["series_uid"]
    assert set(read.seconds) == {"parse", "scan", "decode"}
    for n, part in enumerate(read.parts):
        cut = read.header_bytes(n, part)
        reference = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
        if cut is None:  # deflated: re-encoded by the caller
            continue
        header = pydicom.dcmread(io.BytesIO(cut), force=True)
        assert "PixelData" not in header
        assert [e.tag for e in header] == [e.tag for e in reference]
        assert header.SOPInstanceUID == reference.SOPInstanceUID


def test_sop_uids_come_in_slice_order() -> None:
    path = DICOM / "ct_seg_dcmqi" / "ct-3slice"
    datasets = [pydicom.dcmread(f) for f in _files(path)]
    by_z = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    parts = [f.read_bytes() for f in reversed(_files(path))]
    assert read_dicom_parts(parts).sop_uids_in_slice_order == [str(d.SOPInstanceUID) for d in by_z]


def test_bad_parts_are_named() -> None:
    with pytest.raises(ImagingError, match="not a DICOM instance"):
        read_dicom_parts([b"hello" * 40])
    with pytest.raises(ImagingError, match="no instances"):
        read_dicom_parts([])
    seg = (DICOM / "ct_seg_dcmqi" / "liver.dcm").read_bytes()
    with pytest.raises(ImagingError, match="no DICOM image series"):
        read_dicom_parts([seg])


def _variant(bits: int, stored: int, signed: int, values: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.dcmread(_files(DICOM / "ct_seg_dcmqi" / "ct-3slice")[0])
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    ds.Rows, ds.Columns = values.shape
    ds.PixelData = values.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(("bits", "stored", "signed"), [(16, 16, 1), (16, 16, 0), (8, 8, 0), (16, 12, 0), (16, 12, 1)])
def test_plain_pixels_are_pydicoms(bits: int, stored: int, signed: int) -> None:
    rng = np.random.default_rng(bits + stored + signed)
    hi = 2 ** (bits - 1) if signed else 2**bits
    values = rng.integers(-hi if signed else 0, hi, size=(9, 7))
    ds = _variant(bits, stored, signed, values)
    plain = _plain_pixels(ds)
    if stored != bits:
        assert plain is None  # unused bits: pydicom masks / sign-extends them
        return
    assert plain is not None
    reference = pydicom.dcmread(io.BytesIO(_bytes(ds))).pixel_array
    assert plain.dtype == reference.dtype
    np.testing.assert_array_equal(plain, reference)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int32, np.float32])
@pytest.mark.parametrize(
    ("slopes", "intercepts"),
    [([1, 1, 1, 1], [0, 0, 0, 0]), ([1, 1, 1, 1], [-1024, -1024, 0, 5]), ([1, 2, -1, -3], [-1024, 0, 5, 7]),
     ([0.5, 1, 1, 2], [1.25, 0, 0, -1]), ([40000, 1, 1, 1], [0, 0, 0, 0]), ([1, 1, 1, 1], [-40000, 0, 0, 0]),
     ([1e9, 1, 1, 1], [0, 0, 0, 0])],
)
def test_stack_and_rescale_is_exact(dtype: type, slopes: list[float], intercepts: list[float]) -> None:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        planes = [rng.integers(info.min, info.max, size=(11, 6), endpoint=True).astype(dtype) for _ in range(4)]
    else:
        planes = [rng.normal(0, 1000, size=(11, 6)).astype(dtype) for _ in range(4)]
    expected = _stack_and_rescale_c(planes, slopes, intercepts)  # the reference: whole-array int64/float64
    got = _stack_and_rescale(planes, slopes, intercepts)
    assert got.dtype == expected.dtype and got.shape == expected.shape == (6, 11, 4)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.f_contiguous


@pytest.mark.parametrize("shape", [(512, 512, 7), (7, 5, 3), (7, 5, 3, 2), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.uint16, np.int32, np.float64])
def test_uncompressed_gzip_nifti_is_nibabels_file(tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(1)
    data = np.asfortranarray(rng.integers(0, 200, size=shape).astype(dtype))
    affine = np.diag([0.8, 0.8, 1.25, 1.0])
    affine[:3, 3] = [1, 2, 3]
    vol = Volume(data, affine, {})
    assert _image_pieces(_nifti_image(data, affine), data) is not None  # the fast path is taken
    write_nifti(vol, tmp_path / "fast.nii.gz", compresslevel=0, durable=False)
    write_nifti(vol, tmp_path / "ref.nii.gz")
    fast = (tmp_path / "fast.nii.gz").read_bytes()
    assert gzip.decompress(fast) == gzip.decompress((tmp_path / "ref.nii.gz").read_bytes())
    assert len(fast) > data.nbytes  # stored, not deflated
    np.testing.assert_array_equal(read_nifti(tmp_path / "fast.nii.gz").array, data)
    c_order = Volume(np.ascontiguousarray(data), affine, {})  # not Fortran: nibabel's bytes, same file
    write_nifti(c_order, tmp_path / "c.nii.gz", compresslevel=0)
    assert gzip.decompress((tmp_path / "c.nii.gz").read_bytes()) == gzip.decompress(fast)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 1 << 20])
def test_multipart_split_in_chunks(chunk: int) -> None:
    boundary = "b0undary-xyz"
    parts = [b"", b"DICM" * 100, b"\r\n--b0undary" * 3 + b"tail", bytes(range(256)) * 9]
    body = b"preamble\r\n"
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\nepilogue".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    splitter = MultipartSplitter(ctype)
    got: list[bytes] = []
    for start in range(0, len(body), chunk):
        got += splitter.feed(body[start:start + chunk])
    got += splitter.close()
    assert got == parts == split_multipart(ctype, body)
    single = MultipartSplitter("application/dicom")
    assert single.feed(b"abc") == [] and single.feed(b"def") == [] and single.close() == [b"abcdef"]
    with pytest.raises(ValueError, match="boundary"):
        MultipartSplitter("multipart/related")
