"""`segloop import FOLDER` with DICOM SEG files next to their series: the series become images and
each SEG a label revision of the series it references (as `segloop import-seg` does)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from segloop.imaging.dicom_seg import read_dicom_seg
from segloop.store.local import open_datastore
from tests.cli.conftest import SHARED_DATA, Run

Segloop = Callable[..., Run]
CT = SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "ct-3slice"
LIVER = SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "liver.dcm"
HIPPO_CROP = SHARED_DATA / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume"


def _folder(tmp_path: Path, seg: Path = LIVER) -> Path:
    folder = tmp_path / "in"
    shutil.copytree(CT, folder / "ct")
    shutil.copy(seg, folder / "seg.dcm")
    return folder


def test_import_folder_takes_the_seg_beside_its_series_as_a_label(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    res = segloop("import", _folder(tmp_path), "--data", data, "--json")
    assert res.code == 0, res.err
    assert "skipped" not in res.err and "comes later" not in res.err
    (item,) = res.json()
    assert item["revision"]["source"] == "import:dicom-seg"
    assert item["revision"]["revision"] == 1 and item["revision"]["status"] == "final"

    store = open_datastore(data)
    assert store.get_schema().by_value(1).name == "Liver"
    label = store.load_label(item["id"])
    # the same voxels as the SEG read directly onto the imported image
    expected = read_dicom_seg(pydicom.dcmread(LIVER), store.load_image(item["id"])).label.array
    assert int((label.array == 1).sum()) > 0
    np.testing.assert_array_equal(label.array, expected)


def test_import_folder_seg_made_by_segloops_own_export(segloop: Segloop, tmp_path: Path) -> None:
    """A SEG written by `segloop export --format dicom-seg` goes back in through `segloop import`."""
    first = tmp_path / "first"
    assert segloop("import", CT, "--data", first).code == 0
    assert segloop("import-seg", LIVER, "--data", first).code == 0
    image_id = segloop("images", "--data", first, "--json").json()[0]["id"]
    exported = segloop("export", image_id, "--data", first, "--format", "dicom-seg", "-o", tmp_path / "seg.dcm")
    assert exported.code == 0, exported.err
    original = open_datastore(first).load_label(image_id).array

    data = tmp_path / "D"
    res = segloop("import", _folder(tmp_path, tmp_path / "seg.dcm"), "--data", data)
    assert res.code == 0, res.err
    assert "import:dicom-seg" in res.out
    store = open_datastore(data)
    (image,) = store.list_images()
    np.testing.assert_array_equal(store.load_label(image.id).array, original)


def test_import_seg_whose_series_is_missing_names_it_and_keeps_the_images(segloop: Segloop, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(HIPPO_CROP, folder / "mr")
    shutil.copy(LIVER, folder / "seg.dcm")
    data = tmp_path / "D"
    res = segloop("import", folder, "--data", data)
    assert res.code == 2
    assert "Traceback" not in res.err
    assert "SEG not imported" in res.err and "not in the datastore" in res.err
    assert "segloop import-seg" in res.err
    (image,) = open_datastore(data).list_images()  # the MR series is imported all the same
    assert image.latest_revision is None


def test_import_seg_with_deidentify_follows_the_map(segloop: Segloop, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    no_map = segloop("import", folder, "--data", tmp_path / "A", "--deidentify")
    assert no_map.code == 2
    assert "--deid-map" in no_map.err and "Traceback" not in no_map.err

    data = tmp_path / "B"
    res = segloop("import", folder, "--data", data, "--deidentify", "--deid-map", tmp_path / "map.json", "--json")
    assert res.code == 0, res.err
    (item,) = res.json()
    assert item["revision"]["source"] == "import:dicom-seg"
    original = pydicom.dcmread(sorted(CT.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    assert item["metadata"]["series_uid"] != original
    assert int((open_datastore(data).load_label(item["id"]).array == 1).sum()) > 0


def test_import_seg_error_names_the_extend_schema_flag(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", CT, "--data", data).code == 0
    assert segloop("import-seg", LIVER, "--data", data).code == 0
    res = segloop("import-seg", SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "partial_overlaps.dcm", "--data", data)
    assert res.code == 2
    assert "--extend-schema" in res.err
    assert "Traceback" not in res.err


def test_overlapping_segments_say_exactly_what_was_dropped(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", CT, "--data", data).code == 0
    res = segloop("import-seg", SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "partial_overlaps.dcm", "--data", data)
    assert res.code == 0, res.err
    assert "the highest segment number was kept and these were dropped" in res.err
    lines = [ln.strip() for ln in res.err.splitlines() if "went to segment" in ln]
    assert lines, res.err
    # each line: "<n> voxel(s) of segment <a> '<NAME>' went to segment <b> '<NAME>'", a < b
    import re

    total = 0
    for line in lines:
        m = re.fullmatch(r"(\d+) voxel\(s\) of segment (\d+) '(\w+)' went to segment (\d+) '(\w+)'", line)
        assert m, line
        assert int(m.group(2)) < int(m.group(4))
        total += int(m.group(1))
    assert total > 0
