"""DICOM SEG and NRRD through the command line: import-seg, export --format dicom-seg / nrrd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from segloop.imaging.dicom_seg import read_dicom_seg
from segloop.imaging.nrrd import read_nrrd
from segloop.store.local import open_datastore
from tests.cli.conftest import SHARED_DATA, Run

Segloop = Callable[..., Run]
CT = SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "ct-3slice"
LIVER = SHARED_DATA / "dicom" / "ct_seg_dcmqi" / "liver.dcm"


def test_seg_in_export_seg_and_nrrd_round_trip(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", CT, "--data", data).code == 0
    imp = segloop("import-seg", LIVER, "--data", data)
    assert imp.code == 0, imp.err
    assert "import:dicom-seg" in imp.out
    store = open_datastore(data)
    (image,) = store.list_images()
    label = store.load_label(image.id)
    assert int((label.array == 1).sum()) > 0
    assert store.get_schema().by_value(1).name == "Liver"

    out = tmp_path / "out"
    seg = segloop("export", image.id, "--data", data, "--format", "dicom-seg", "--source-dicom", CT, "-o", out)
    assert seg.code == 0, seg.err
    seg_path = Path(seg.out.strip())
    back = read_dicom_seg(pydicom.dcmread(seg_path), store.load_image(image.id))
    np.testing.assert_array_equal(back.label.array, label.array)

    nrrd = segloop("export", image.id, "--data", data, "--format", "nrrd", "--what", "label", "-o", out / "l.seg.nrrd")
    assert nrrd.code == 0, nrrd.err
    vol = read_nrrd(out / "l.seg.nrrd")
    np.testing.assert_array_equal(vol.array, label.array)
    np.testing.assert_allclose(vol.affine, label.affine, atol=1e-4)


def test_seg_export_uses_the_headers_kept_at_import(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", CT, "--data", data).code == 0
    assert segloop("import-seg", LIVER, "--data", data).code == 0
    image_id = segloop("images", "--data", data, "--json").json()[0]["id"]
    res = segloop("export", image_id, "--data", data, "--format", "dicom-seg", "-o", tmp_path / "kept")
    assert res.code == 0, res.err  # no --source-dicom: the headers kept at import are used
    store = open_datastore(data)
    back = read_dicom_seg(pydicom.dcmread(Path(res.out.strip())), store.load_image(image_id))
    np.testing.assert_array_equal(back.label.array, store.load_label(image_id).array)
    wrong = segloop("export", image_id, "--data", data, "--format", "dicom-seg", "-o", tmp_path / "o",
                    "--source-dicom", SHARED_DATA / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume")
    assert wrong.code == 2
    assert "Traceback" not in wrong.err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_seg_for_a_series_that_is_not_imported_is_refused(segloop: Segloop, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert segloop("import", SHARED_DATA / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume", "--data", data).code == 0
    res = segloop("import-seg", LIVER, "--data", data)
    assert res.code == 2
    assert "Traceback" not in res.err
    store = open_datastore(data)
    assert all(img.latest_revision is None for img in store.list_images())
