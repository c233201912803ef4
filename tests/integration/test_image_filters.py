"""``GET /api/v1/images?modality=&study_date=&description=`` on the local store: the filters
apply to the metadata kept at import, with the same rules as the DICOMweb store's QIDO-RS
search (tests/pacs/test_pacs_server.py checks that side against a real Orthanc)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from segloop.server import ServerSettings, create_app
from segloop.store.filters import SeriesFilter
from segloop.store.ingest import import_paths
from segloop.store.local import open_datastore
from tests.integration._harness import HIPPO

DICOM = HIPPO.parent / "dicom"
CT = DICOM / "ct_seg_dcmqi" / "ct-3slice"  # CT, study date 20030417, no series description
MR = DICOM / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume"  # MR, 20200119, "HippoCrop"
NIFTI = HIPPO / "imagesTr" / "hippocampus_001.nii.gz"  # no date, no description


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    for path in (CT, MR, NIFTI):
        if not path.exists():
            pytest.skip(f"{path} is missing")
    data = tmp_path_factory.mktemp("filters")
    store = open_datastore(data)
    import_paths(store, [CT, MR, NIFTI], author="t")
    store.close()
    with TestClient(create_app(ServerSettings(data=data, job_mode="thread"))) as c:
        yield c


def names(client: TestClient, **params: str) -> list[str]:
    r = client.get("/api/v1/images", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["items"])
    return sorted(str(item["modality"]) + ":" + str(item["metadata"].get("study_date") or "-") for item in body["items"])


def test_filters_on_the_local_store(client: TestClient) -> None:
    assert len(names(client)) == 3
    assert names(client, modality="MR") == ["MR:20200119"]
    assert names(client, modality="ct") == ["CT:20030417"]  # case-insensitive, as QIDO on Orthanc
    assert names(client, study_date="20200119") == ["MR:20200119"]
    assert names(client, study_date="20200101-20201231") == ["MR:20200119"]
    assert names(client, study_date="-20101231") == ["CT:20030417"]  # open start
    assert names(client, study_date="20100101-") == ["MR:20200119"]  # open end
    assert names(client, description="hippocrop") == ["MR:20200119"]
    # no series description (NIfTI): matched on the name; wildcards over the whole text
    hippo = names(client, description="hippo*")
    assert len(hippo) == 2 and "MR:20200119" in hippo
    assert names(client, description="Hippo?rop") == ["MR:20200119"]
    assert names(client, modality="MR", study_date="20030417") == []
    assert names(client, modality="MR", description="hippo", label_state="none") == ["MR:20200119"]
    r = client.get("/api/v1/images", params={"modality": "mr", "limit": 1})
    assert r.json()["filters"] == {"modality": "MR"}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"study_date": "2020-01-19"}, "YYYYMMDD"),
        ({"study_date": "20201301"}, "not a calendar date"),
        ({"study_date": "20201231-20200101"}, "starts after it ends"),
        ({"study_date": "2020"}, "YYYYMMDD"),
        ({"modality": "C T"}, "modality"),
        ({"description": "a\\b"}, "backslash"),
    ],
)
def test_malformed_filters_are_refused_naming_them(client: TestClient, params: dict[str, str], words: str) -> None:
    r = client.get("/api/v1/images", params=params)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid" and words in error["message"]


def test_a_request_cannot_widen_the_start_up_filter() -> None:
    server = SeriesFilter.parse("CT", "20200101-20201231", "liver")
    assert server.narrow(SeriesFilter.parse("ct")) == SeriesFilter("CT", "20200101-20201231", "liver")
    assert server.narrow(SeriesFilter.parse("MR")).empty
    assert server.narrow(SeriesFilter.parse(study_date="20190101-20200630")).study_date == "20200101-20200630"
    assert server.narrow(SeriesFilter.parse(study_date="20210101-")).empty
    assert SeriesFilter.parse(study_date="20200101-").narrow(SeriesFilter.parse(study_date="-20200101")).study_date == "20200101"
