"""Issue 7 on the command line: import --deidentify/--deid-map, serve --dicomweb/--ephemeral checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT = SHARED / "dicom" / "ct_seg_dcmqi" / "ct-3slice"


def segloop(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segloop", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_import_deidentify_with_and_without_map(tmp_path: Path) -> None:
    original = pydicom.dcmread(sorted(CT.iterdir())[0], stop_before_pixels=True)
    data, mapping = tmp_path / "D", tmp_path / "keys" / "map.json"
    res = segloop("import", CT, "--data", data, "--deidentify", "--deid-map", mapping, "--json")
    assert res.returncode == 0, res.stderr
    listed = segloop("images", "--data", data, "--json")
    assert str(original.PatientID) not in listed.stdout + res.stdout
    assert str(original.SeriesInstanceUID) not in listed.stdout + res.stdout
    headers = sorted((data / "attachments").rglob("*.dcm"))
    assert len(headers) == 3
    assert all(pydicom.dcmread(h).PatientIdentityRemoved == "YES" for h in headers)
    assert str(original.PatientID) in mapping.read_text()

    plain = tmp_path / "E"
    assert segloop("import", CT, "--data", plain, "--deidentify").returncode == 0
    assert not list(tmp_path.glob("E/**/*.json"))
    refused = segloop("import", CT, "--data", tmp_path / "F", "--deid-map", tmp_path / "m.json")
    assert refused.returncode == 2 and "--deidentify" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ephemeral"], "--ephemeral needs --dicomweb"),
        (["--dicomweb-auth", "u:p"], "need --dicomweb"),
        (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--dicomweb-filter", "colour=red"], "modality="),
        (["--dicomweb", "ftp://x"], "http:// or https://"),
    ],
)
def test_serve_dicomweb_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    res = segloop("serve", "--data", tmp_path / "D", "--port", "1", *args, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
