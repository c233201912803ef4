"""POST /api/v1/images/{id}/dicom-seg: a DICOM SEG becomes a label revision of the image, and the
answer says exactly what flattening overlapping segments dropped (no PACS needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from segloop.imaging import read_dicom_series
from segloop.imaging.dicom_seg import read_dicom_seg
from segloop.server import ServerSettings, create_app
from segloop.store.ingest import import_paths
from segloop.store.local import open_datastore


@pytest.fixture
def served(tmp_path: Path, dicom_sets: dict[str, Path]) -> tuple[TestClient, str]:
    store = open_datastore(tmp_path / "data")
    (item,) = import_paths(store, [dicom_sets["ct"]]).images
    store.close()
    return TestClient(create_app(ServerSettings(data=tmp_path / "data", job_mode="thread"))), item.record.id


def test_seg_import_reports_dropped_voxels_per_segment_pair(served: tuple[TestClient, str], dicom_sets: dict[str, Path]) -> None:
    client, image_id = served
    path = dicom_sets["liver"].parent / "partial_overlaps.dcm"
    with client:
        res = client.post(f"/api/v1/images/{image_id}/dicom-seg", files={"file": ("s.dcm", path.read_bytes())},
                          data={"status": "draft"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["revision"]["revision"] == 1 and body["revision"]["source"] == "import:dicom-seg"
        assert body["schema_changed"] is True
        expected = read_dicom_seg(path, read_dicom_series(dicom_sets["ct"]))
        assert body["overlap_voxels"] == expected.overlap_voxels > 0
        got = {(o["kept"], o["dropped"]): o["voxels"] for o in body["overlaps"]}
        assert got == {(o.kept, o.dropped): o.voxels for o in expected.overlaps}
        names = {s.number: s.label for s in expected.segments}
        for o in body["overlaps"]:
            assert o["kept_label"] == names[o["kept"]] and o["dropped_label"] == names[o["dropped"]]
            assert o["kept_value"] and o["dropped_value"]
        saved = client.get(f"/api/v1/images/{image_id}/labels/1")
        assert saved.status_code == 200

        # a SEG of another series is refused with its reason; nothing is stored
        other = dicom_sets["mr"]
        bad = client.post(f"/api/v1/images/{image_id}/dicom-seg",
                          files={"file": ("x.dcm", next(iter(sorted(other.iterdir()))).read_bytes())})
        assert bad.status_code == 422
        assert len(client.get(f"/api/v1/images/{image_id}/labels").json()["items"]) == 1
    np.testing.assert_array_equal(open_datastore(Path(client.app.state.segloop.settings.data)).load_label(image_id).array,  # type: ignore[attr-defined]
                                  expected.label.array)
