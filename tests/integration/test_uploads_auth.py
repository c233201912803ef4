"""Bad uploads (4xx JSON naming the problem, nothing stored), auth rules, TLS, restart recovery."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from segloop.server.auth import hash_password, new_token
from tests.integration._harness import CASES, ROOT, TINY_TRAIN, Server, hippo_image, make_data, wait_job


def _count(client: httpx.Client) -> int:
    return int(client.get("/images").json()["total"])


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


GOOD = hippo_image(CASES[5]).read_bytes()

BAD_UPLOADS = {
    "truncated_nifti": ([("file", ("scan.nii.gz", GOOD[: len(GOOD) // 2]))], 422, "scan.nii.gz"),
    "text_as_dicom": ([("file", ("slice.dcm", b"this is not a DICOM file\n" * 20))], 422, "slice.dcm"),
    "zip_slip": ([("file", ("series.zip", _zip({"../evil.nii.gz": GOOD})))], 422, ".."),
    "good_and_bad_together": (
        [("file", ("good.nii.gz", GOOD)), ("file", ("bad.nii.gz", GOOD[:100]))],
        422,
        "bad.nii.gz",
    ),
    "oversized": ([("file", ("big.nii.gz", b"\0" * 700_000))], 413, "limit"),
    "no_file_field": ([("other", ("x.nii.gz", GOOD))], 422, "file"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_stores_nothing(client: httpx.Client, case: str) -> None:
    files, status, needle = BAD_UPLOADS[case]
    before = _count(client)
    r = client.post("/images", files=files)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"], err
    assert "/staging/" not in err["message"]  # the message names the upload, not server paths
    assert _count(client) == before


def test_not_multipart_is_415(client: httpx.Client) -> None:
    r = client.post("/images", content=GOOD, headers={"content-type": "application/gzip"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_zip_of_nifti_upload(client: httpx.Client) -> None:
    before = _count(client)
    r = client.post("/images", files={"file": ("case.zip", _zip({"inner/zipped_case.nii.gz": GOOD}))})
    assert r.status_code == 201, r.text
    assert [i["name"] for i in r.json()["images"]] == ["zipped_case"]
    assert _count(client) == before + 1


def test_label_on_wrong_grid_is_refused(client: httpx.Client) -> None:
    image_id = client.get("/images").json()["items"][0]["id"]
    other = hippo_image(CASES[5]).read_bytes()  # a different shape than case 001
    n = len(client.get(f"/images/{image_id}/labels").json()["items"])
    r = client.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", other)}, data={"base_revision": str(n)})
    assert r.status_code == 422, r.text
    assert len(client.get(f"/images/{image_id}/labels").json()["items"]) == n


# --- auth -------------------------------------------------------------------------------------------


def test_public_host_without_auth_refuses_to_start(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "segloop.cli", "serve", "--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert r.returncode != 0
    assert "without authentication" in r.stderr


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, dict[str, str]]:
    folder = tmp_path_factory.mktemp("auth")
    data = make_data(folder, CASES[:2])
    token, digest = new_token()
    config = {
        "users": {
            "ann": {"role": "annotator", "password": hash_password("ann-pw")},
            "rev": {"role": "reviewer", "password": hash_password("rev-pw")},
            "boss": {"role": "admin", "password": hash_password("boss-pw")},
        },
        "tokens": [{"name": "bot", "role": "annotator", "sha256": digest}],
    }
    auth_file = folder / "auth.json"
    auth_file.write_text(json.dumps(config))
    srv = Server(data, "--auth", str(auth_file)).wait_ready()
    yield srv, {"token": token}
    srv.stop()


def test_auth_roles(auth_server: tuple[Server, dict[str, str]]) -> None:
    srv, secrets = auth_server
    api = srv.api
    assert httpx.get(f"{api}/health").status_code == 200  # liveness needs no credentials
    r = httpx.get(f"{api}/images")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{api}/images", auth=("ann", "wrong")).status_code == 401
    assert httpx.get(f"{api}/images", headers={"Authorization": "Bearer nope"}).status_code == 401

    ann = httpx.Client(base_url=api, auth=("ann", "ann-pw"), timeout=60)
    rev = httpx.Client(base_url=api, auth=("rev", "rev-pw"), timeout=60)
    boss = httpx.Client(base_url=api, auth=("boss", "boss-pw"), timeout=60)
    bot = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {secrets['token']}"}, timeout=60)
    assert bot.get("/auth/me").json() == {"name": "bot", "role": "annotator", "via": "token"}
    image_id = ann.get("/images").json()["items"][0]["id"]

    # annotator: view, save drafts; not mark final, upload, delete, train, set the schema
    assert ann.get(f"/images/{image_id}/volume").status_code == 200
    label = ann.get(f"/images/{image_id}/labels/1").content
    r = ann.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", label)}, data={"base_revision": "1"})
    assert r.status_code == 201 and r.json()["author"] == "ann"
    assert ann.post(f"/images/{image_id}/labels/2/final").status_code == 403
    assert ann.post(f"/images/{image_id}/labels", files={"file": ("l.nii.gz", label)},
                    data={"base_revision": "2", "status": "final"}).status_code == 403
    assert ann.post("/images", files={"file": ("x.nii.gz", GOOD)}).status_code == 403
    assert ann.delete(f"/images/{image_id}").status_code == 403
    assert ann.post("/models/m/train", json={"config": TINY_TRAIN}).status_code == 403
    assert ann.put("/schema", json=ann.get("/schema").json()).status_code == 403
    # reviewer: mark final, upload; not delete or train
    assert rev.post(f"/images/{image_id}/labels/2/final").json()["status"] == "final"
    assert rev.post("/images", files={"file": ("up.nii.gz", GOOD)}).status_code == 201
    assert rev.delete(f"/images/{image_id}").status_code == 403
    assert rev.post("/models/m/train", json={"config": TINY_TRAIN}).status_code == 403
    # admin: everything
    assert boss.put("/schema", json=boss.get("/schema").json()).status_code == 200
    assert boss.delete("/images/up").status_code == 200

    # session login → bearer token; WebSocket/SSE-style query token
    r = httpx.post(f"{api}/auth/login", json={"username": "rev", "password": "rev-pw"})
    assert r.status_code == 200
    session_token = r.json()["token"]
    assert httpx.get(f"{api}/auth/me", headers={"Authorization": f"Bearer {session_token}"}).json()["role"] == "reviewer"
    assert httpx.get(f"{api}/images", params={"access_token": secrets["token"]}).status_code == 200
    assert httpx.post(f"{api}/auth/login", json={"username": "rev", "password": "x"}).status_code == 401
    for c in (ann, rev, boss, bot):
        c.close()


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip("openssl could not make a test certificate")
    srv = Server(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), scheme="https")
    try:
        srv.wait_ready(verify=False)
        assert httpx.get(f"{srv.api}/health", verify=False).json()["status"] == "ok"
    finally:
        srv.stop()


# --- restart --------------------------------------------------------------------------------------------


def test_restart_marks_running_job_interrupted(tmp_path: Path) -> None:
    import signal

    data = make_data(tmp_path, CASES[:3])
    srv = Server(data, "--job-threads", "1").wait_ready()
    with httpx.Client(base_url=srv.api, timeout=60) as c:
        first = c.post("/models/m/train", json={"config": TINY_TRAIN}).json()
        done = wait_job(c, first["id"])
        assert done["state"] == "done"
        good_version = c.get("/models/m").json()["current_version"]
        long = c.post("/models/m/train", json={"config": {**TINY_TRAIN, "epochs": 1000}, "fine_tune": good_version}).json()
        # wait until it really runs (it has reported progress)
        for _ in range(600):
            job = c.get(f"/jobs/{long['id']}").json()
            if job["state"] == "running" and job["detail"]:
                break
            import time

            time.sleep(0.2)
        assert job["state"] == "running"
    srv.stop(signal.SIGKILL)  # no clean shutdown

    srv2 = Server(data).wait_ready()
    try:
        with httpx.Client(base_url=srv2.api, timeout=60) as c:
            job = c.get(f"/jobs/{long['id']}").json()
            assert job["state"] == "interrupted", job
            assert c.get("/models/m").json()["current_version"] == good_version
    finally:
        srv2.stop()
