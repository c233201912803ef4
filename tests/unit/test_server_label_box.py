"""The compact click response (`segloop.server.maskcodec` box helpers, `SessionEntry.box_since`):
a box applied to the client's earlier mask gives the new mask; unknown or stale steps give None
(the server then sends the whole mask)."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segloop.server.maskcodec import (
    apply_box,
    box_bounds,
    box_size,
    box_union,
    encode_box,
    format_box,
    parse_box,
)
from segloop.server.workers import SessionEntry


def test_box_round_trip_in_fortran_order() -> None:
    rng = np.random.default_rng(0)
    old = rng.integers(0, 3, (20, 17, 9), dtype=np.uint8)
    new = old.copy()
    box = (slice(3, 11), slice(0, 5), slice(4, 9))
    new[box] = rng.integers(0, 3, (8, 5, 5), dtype=np.uint8)
    body = encode_box(new, box)
    # the voxels travel x fastest, like the NIfTI mask
    assert gzip.decompress(body) == new[box].tobytes(order="F")
    target = old.copy()
    assert apply_box(target, parse_box(format_box(box)), body) is target
    assert np.array_equal(target, new)


def test_empty_box_changes_nothing() -> None:
    mask = np.ones((4, 4, 4), np.uint8)
    box = parse_box("0,0,0,0,0,0")
    assert box_size(box) == 0
    assert np.array_equal(apply_box(mask, box, encode_box(mask, box)), np.ones((4, 4, 4), np.uint8))


def test_box_helpers() -> None:
    assert format_box((slice(1, 2), slice(3, 4), slice(5, 6))) == "1,2,3,4,5,6"
    for bad in ("1,2,3", "2,1,0,1,0,1", "-1,2,0,1,0,1", "a,b,c,d,e,f"):
        with pytest.raises(ValueError):
            parse_box(bad)
    assert box_bounds((slice(None), slice(2, 99), slice(-3, None)), (5, 10, 8)) == (slice(0, 5), slice(2, 10), slice(5, 8))
    a = (slice(0, 2), slice(5, 6), slice(1, 3))
    b = (slice(4, 6), slice(0, 1), slice(2, 8))
    assert box_union(a, b) == (slice(0, 6), slice(0, 6), slice(1, 8))
    assert box_union(None, b) == b and box_union((slice(0, 0),) * 3, b) == b and box_union(a, (slice(3, 3),) * 3) == a
    with pytest.raises(ValueError):
        apply_box(np.zeros((4, 4, 4), np.uint8), a, gzip.compress(b"\x00"))


def _pred(mask: np.ndarray, step: int, changed: tuple[int, tuple[slice, ...]] | None) -> SimpleNamespace:
    return SimpleNamespace(label=SimpleNamespace(array=mask, affine=np.eye(4)), step=step, changed=changed)


def test_box_since_walks_the_steps() -> None:
    entry = SessionEntry("s", "img", "m", 1, "me", session=None)
    shape = (40, 40, 40)
    masks = [np.zeros(shape, np.uint8)]
    boxes = [(slice(0, 4), slice(0, 4), slice(0, 4)), (slice(10, 12), slice(20, 30), slice(5, 6)), (slice(30, 32), slice(1, 2), slice(3, 4))]
    preds = [_pred(masks[0], 1, None)]
    entry.note(preds[0])
    for n, box in enumerate(boxes):
        m = masks[-1].copy()
        m[box] = n + 1
        masks.append(m)
        preds.append(_pred(m, n + 2, (n + 1, box)))
        entry.note(preds[-1])
    last = preds[-1]
    assert entry.box_since(4, last) == (slice(0, 0),) * 3  # the client holds it already
    assert entry.box_since(3, last) == boxes[2]
    assert entry.box_since(2, last) == (slice(10, 32), slice(1, 30), slice(3, 6))
    for since in (1, 2, 3, 4):  # any earlier step: its mask + the box = the newest mask
        box = entry.box_since(since, last)
        assert box is not None
        got = apply_box(masks[since - 1].copy(), box, encode_box(last.label.array, box))
        assert np.array_equal(got, masks[-1])
    assert entry.box_since(0, last) is None  # the client holds nothing known
    assert entry.box_since(9, last) is None  # a step the session never had
    entry.links.pop(3)
    assert entry.box_since(2, last) is None  # a step not noted: no box, the whole mask


def test_box_since_sends_whole_volume_changes_whole() -> None:
    entry = SessionEntry("s", "img", "m", 1, "me", session=None)
    mask = np.ones((8, 8, 8), np.uint8)
    pred = _pred(mask, 2, (1, (slice(0, 8), slice(0, 8), slice(0, 8))))
    entry.note(pred)
    assert entry.box_since(1, pred) is None


def test_schema_cache_sees_every_schema_change(tmp_path: Path) -> None:
    from segloop.server.routes_sessions import SchemaCache
    from segloop.store import LabelClass, LabelSchema
    from segloop.store.local import open_datastore

    store = open_datastore(tmp_path / "store")
    store.set_schema(LabelSchema((LabelClass(1, "liver", (255, 0, 0)),)))
    cache = SchemaCache()
    first = cache.get(store)
    assert [c.name for c in first.foreground] == ["liver"]
    assert cache.get(store) is first  # no database change: the cached schema
    store.set_schema(LabelSchema((LabelClass(1, "tumour", (0, 255, 0)),)))
    assert [c.name for c in cache.get(store).foreground] == ["tumour"]
    # a write by another process (here: another connection of this one) is seen too
    other = open_datastore(tmp_path / "store")
    other.set_schema(LabelSchema((LabelClass(2, "cyst", (0, 0, 255)),)))
    assert [c.name for c in cache.get(store).foreground] == ["cyst"]
    # a store of another folder: its own schema
    elsewhere = open_datastore(tmp_path / "other")
    assert [c.name for c in cache.get(elsewhere).foreground] == []
