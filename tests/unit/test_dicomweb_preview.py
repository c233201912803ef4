"""Choosing a PACS series' middle slice from its QIDO-RS listing, and cutting a volume's middle
slice at its place in the world (the first image of issue 17's PACS view)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from segloop.imaging.volume import Volume, middle_slice
from segloop.store.dicomweb_preview import middle_instance, sampled_middle


def _item(uid: str, *, position: list[float] | None = None, orientation: list[float] | None = None,
          number: int | None = None, frames: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00080018": {"vr": "UI", "Value": [uid]}}
    if position is not None:
        item["00200032"] = {"vr": "DS", "Value": position}
    if orientation is not None:
        item["00200037"] = {"vr": "DS", "Value": orientation}
    if number is not None:
        item["00200013"] = {"vr": "IS", "Value": [number]}
    if frames is not None:
        item["00280008"] = {"vr": "IS", "Value": [frames]}
    return item


AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_the_middle_is_found_by_position_whatever_the_listing_order(n: int) -> None:
    # instance numbers run against the positions: position decides
    items = [_item(f"1.{k}", position=[0.0, 0.0, -50.0 + 2.5 * k], orientation=AXIAL, number=n - k) for k in range(n)]
    random.Random(n).shuffle(items)
    uid, step = middle_instance(items) or ("", None)
    assert uid == f"1.{n // 2}"
    assert step == (pytest.approx(2.5) if n > 1 else None)


def test_an_oblique_stack_is_ordered_along_its_normal() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = [1.0, 0.0, 0.0, 0.0, c, s]
    normal = np.cross(orientation[:3], orientation[3:])
    items = [_item(f"2.{k}", position=list(np.array([5.0, 1.0, 2.0]) + 3.0 * k * normal), orientation=orientation)
             for k in range(5)]
    uid, step = middle_instance(items[::-1]) or ("", None)
    assert uid == "2.2" and step == pytest.approx(3.0)


def test_without_positions_instance_numbers_decide_then_the_listing_order() -> None:
    items = [_item(f"3.{k}", number=k + 1) for k in range(5)]
    assert middle_instance(items[::-1]) == ("3.2", None)
    items = [_item(f"4.{k}") for k in range(4)]
    assert middle_instance(items) == ("4.2", None)  # the listing's own order
    # mixed orientations are not one stack: positions are not used
    mixed = [_item("5.0", position=[0, 0, 0], orientation=AXIAL, number=2),
             _item("5.1", position=[0, 0, 1], orientation=[0, 1, 0, 0, 0, 1], number=1)]
    assert middle_instance(mixed) == ("5.0", None)


def test_a_multi_frame_instance_or_an_empty_listing_has_no_slice_to_fetch() -> None:
    assert middle_instance([_item("6.0", frames=120)]) is None
    assert middle_instance([]) is None
    assert middle_instance([{"00200013": {"vr": "IS", "Value": [1]}}]) is None  # no SOP instance UID


def test_middle_slice_keeps_the_slice_where_it_was() -> None:
    affine = np.array([[0.0, 0.0, 2.0, -10.0], [0.0, -1.5, 0.0, 20.0], [1.2, 0.0, 0.0, 5.0], [0, 0, 0, 1]])
    array = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5)
    volume = Volume(array, affine)
    cut = middle_slice(volume)
    assert cut.shape == (4, 3, 1) and np.array_equal(cut.array[..., 0], array[:, :, 2])
    for i, j in [(0, 0), (3, 2), (1, 1)]:  # every voxel's centre is where it was in the volume
        np.testing.assert_allclose(cut.affine @ [i, j, 0, 1], affine @ [i, j, 2, 1])
    four = Volume(np.zeros((2, 2, 4, 3), np.float32), np.eye(4))
    assert middle_slice(four).array.shape == (2, 2, 1, 3)


def test_a_sample_of_a_listing_in_stack_order_gives_its_exact_middle_and_spacing() -> None:
    n = 200
    listing = [_item(f"7.{k}", position=[0.0, 0.0, 300.0 - 1.5 * k], orientation=AXIAL) for k in range(n)]
    offsets = [20, 60, 100, 140, 180]
    uid, step = sampled_middle([(k, listing[k]) for k in offsets], n // 2) or ("", None)
    assert uid == "7.100" and step == pytest.approx(1.5)


def test_a_sample_of_a_listing_in_no_order_gives_the_sample_in_the_middle_of_the_stack() -> None:
    places = {20: 7.0, 60: -40.0, 100: 90.0, 140: 2.0, 180: 55.0}  # the listing is not in stack order
    samples = [(k, _item(f"8.{k}", position=[0.0, 0.0, z], orientation=AXIAL)) for k, z in places.items()]
    assert sampled_middle(samples, 100) == ("8.20", None)  # 7 mm: the median of the five places
    # no positions and no numbers: the listing's middle
    assert sampled_middle([(k, _item(f"9.{k}")) for k in places], 100) == ("9.100", None)
    assert sampled_middle([], 100) is None
