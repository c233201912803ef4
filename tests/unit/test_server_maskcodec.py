"""`segloop.server.maskcodec`: the incremental gzip NIfTI encoder of session masks gives the
same bytes, once decompressed, as encoding each mask whole; CRC-32 combination matches zlib."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from segloop.imaging.volume import Volume
from segloop.server.maskcodec import (
    IncrementalLabelEncoder,
    crc32_combine,
    crc32_shift_operator,
    label_nifti_gz,
)


@pytest.mark.parametrize(("len_a", "len_b"), [(0, 5), (3, 0), (17, 100_000), (1, 1), (65_536, 65_536)])
def test_crc32_combine_matches_zlib(len_a: int, len_b: int) -> None:
    rng = np.random.default_rng(len_a + len_b)
    a = rng.integers(0, 256, len_a, dtype=np.uint8).tobytes()
    b = rng.integers(0, 256, len_b, dtype=np.uint8).tobytes()
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), crc32_shift_operator(len_b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("shape", [(64, 48, 40), (40, 30, 16), (7, 5, 3), (9, 9, 8)])
def test_incremental_encoding_round_trips(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 0.9, 2.0, 1.0])
    affine[:3, 3] = [3.0, -4.0, 5.0]
    encoder = IncrementalLabelEncoder(affine, shape)
    label = np.zeros(shape, np.uint8)
    for step in range(8):
        label = label.copy()
        if step != 3:  # step 3: nothing changed
            c = [int(rng.integers(0, s)) for s in shape]
            label[max(0, c[0] - 6) : c[0] + 6, max(0, c[1] - 6) : c[1] + 6, max(0, c[2] - 6) : c[2] + 6] = rng.integers(0, 3)
        out = encoder.encode(label)
        raw = gzip.decompress(out)
        assert raw == gzip.decompress(label_nifti_gz(Volume(label, affine)))
        img = nib.Nifti1Image.from_bytes(raw)
        assert np.array_equal(np.asarray(img.dataobj), label) and np.allclose(img.affine, affine)
        d = zlib.decompressobj(31)  # one gzip member, nothing after it
        assert d.decompress(out) + d.flush() == raw and d.eof and not d.unused_data
    slabs = -(-shape[2] // 8)
    assert encoder.slabs_encoded < 8 * slabs  # later steps re-encoded only what changed


def test_encoder_refuses_another_shape() -> None:
    encoder = IncrementalLabelEncoder(np.eye(4), (8, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(np.zeros((8, 8, 9), np.uint8))
