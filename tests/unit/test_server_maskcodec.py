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
    blocks = shape[2] * -(-shape[1] // max(1, 8192 // shape[0]))
    assert encoder.blocks_encoded < 8 * blocks  # later steps re-encoded only what changed


def test_encoder_refuses_another_shape() -> None:
    encoder = IncrementalLabelEncoder(np.eye(4), (8, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        encoder.encode(np.zeros((8, 8, 9), np.uint8))


def test_since_hint_compares_the_box_only() -> None:
    shape = (32, 40, 24)
    rng = np.random.default_rng(1)
    encoder = IncrementalLabelEncoder(np.eye(4), shape)
    first = rng.integers(0, 2, shape).astype(np.uint8)
    encoder.encode(first, tag=1)
    second = first.copy()
    box = (slice(3, 11), slice(20, 33), slice(5, 17))
    second[box] = 2
    out = encoder.encode(second, tag=2, since=(1, box))
    assert encoder.full_compares == 0  # (the first mask has nothing to compare with)
    assert gzip.decompress(out) == gzip.decompress(label_nifti_gz(Volume(second, np.eye(4))))
    # a hint from another state than the last one encoded is not trusted: the whole mask is compared
    third = second.copy()
    third[30, 1, 1] = 3
    out = encoder.encode(third, tag=4, since=(3, (slice(0, 1), slice(0, 1), slice(0, 1))))
    assert encoder.full_compares == 1
    assert gzip.decompress(out) == gzip.decompress(label_nifti_gz(Volume(third, np.eye(4))))
    # the same mask again: nothing to compare
    assert encoder.encode(third, tag=4) == out and encoder.full_compares == 1


def test_session_masks_over_the_route_encoder() -> None:
    """The click/undo/redo/upload responses of a session large enough for the incremental
    encoder (2^20 voxels) decode to the session's mask, comparing only each step's box."""
    from segloop.ml.clicks import Click
    from segloop.server.routes_sessions import _session_mask
    from segloop.server.workers import SessionEntry
    from tests.unit.tiny_model import tiny_predictor

    predictor = tiny_predictor()
    shape = (128, 128, 64)
    image = Volume(np.random.default_rng(0).normal(size=shape).astype(np.float32), np.diag([0.8, 0.8, 2.0, 1.0]))
    session = predictor.session(image)
    entry = SessionEntry("s", "img", "tiny", 1, "me", session)
    entry.encode_prediction(session.prediction)  # what opening a session does: the first, full encoding

    def check(pred: object) -> None:
        raw = gzip.decompress(_session_mask(entry, pred))
        img = nib.Nifti1Image.from_bytes(raw)
        assert np.array_equal(np.asarray(img.dataobj), np.asarray(pred.label.array))  # type: ignore[attr-defined]

    check(session.add_clicks([Click(1, (10, 20, 30))]))
    check(session.add_clicks([Click(2, (100, 90, 10)), Click(1, (60, 64, 32))]))
    check(session.undo())
    check(session.redo())
    edited = np.asarray(session.prediction.label.array).copy()
    edited[70:80, 5:9, 40:60] = 2
    check(session.set_label(edited))
    check(session.undo())
    check(session.prediction)  # the current mask again (GET /sessions/{id}/label)
    assert entry.encoder.full_compares == 0  # every step compared its box only


def test_whole_mask_bytes_do_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two encodings of one mask are the same bytes (gzip mtime 0), whenever they are made."""
    from segloop.server.maskcodec import label_nifti_gz

    label = Volume(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3, np.eye(4))
    monkeypatch.setattr(gzip.time, "time", lambda: 1_000_000_000.0)  # type: ignore[attr-defined]
    first = label_nifti_gz(label)
    monkeypatch.setattr(gzip.time, "time", lambda: 2_000_000_000.0)  # type: ignore[attr-defined]
    assert label_nifti_gz(label) == first and first[4:8] == b"\x00\x00\x00\x00"
