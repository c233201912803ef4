"""The exact request shapes of MONAI Label's 3D Slicer module, sent over plain HTTP:
the deprecated upload alias ``PUT /datastore/?image=``, ``/infer`` with IJK points and
``result_extension: .nrrd``, the multipart answer parsed as the module parses it, and the
label coming back on the image's geometry — for a NIfTI image (the file's voxel order) and
for an oblique DICOM series (Slicer's / ITK's IJK: i = column, j = row, k = slices sorted
ascending along the slice normal). Also: Bearer auth, and OHIF's ``.bin`` label upload."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.compat.conftest import MODEL
from tests.integration._harness import Server, hippo_image

BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # what the Slicer module's client sends


def slicer_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """The body the Slicer module's ``MONAILabelUtils.encode_multipart_formdata`` builds."""
    lines: list[bytes] = []
    for key, value in fields.items():
        lines += [f"--{BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{key}"'.encode(), b"",
                  value.encode()]
    for key, (filename, data) in files.items():
        lines += [f"--{BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{key}"; filename="{filename}"'.encode(),
                  b"Content-Type: application/octet-stream", b"", data]
    lines += [f"--{BOUNDARY}--".encode(), b""]
    return f"multipart/form-data; boundary={BOUNDARY}", b"\r\n".join(lines)


def parse_answer(response: httpx.Response) -> tuple[dict[str, Any], str, bytes]:
    """(params, image file name, image bytes) from a multipart /infer answer, two ways: the
    client's own parser (``cgi.FieldStorage``, as in the Slicer module) and the email parser."""
    from monailabel.client.client import MONAILabelUtils

    assert response.status_code == 200, response.text
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + response.content)
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
    assert set(parts) == {"params", "image"}
    filename = parts["image"].get_filename()
    data = parts["image"].get_payload(decode=True)

    class Headers(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override,unused-ignore]
            return super().get(key.lower(), default)

    form, files = MONAILabelUtils.parse_multipart(
        io.BytesIO(response.content), Headers({"content-type": ctype, "content-length": str(len(response.content))}))
    assert set(files) == {filename} and files[filename] == data
    params = json.loads(form["params"])
    assert params == json.loads(parts["params"].get_content())
    assert isinstance(filename, str) and isinstance(data, bytes)
    return params, filename, data


def read_nrrd_bytes(data: bytes, tmp: Path) -> tuple[np.ndarray, dict[str, Any]]:
    path = tmp / "answer.nrrd"
    path.write_bytes(data)
    arr, header = nrrd.read(str(path))
    return arr, header


def nrrd_world_lps(header: dict[str, Any], ijk: tuple[int, int, int]) -> np.ndarray:
    assert header["space"] == "left-posterior-superior"
    return np.asarray(header["space origin"], float) + np.asarray(ijk, float) @ np.asarray(header["space directions"], float)


def infer(server: Server, model: str, image: str, params: dict[str, Any]) -> httpx.Response:
    ctype, body = slicer_multipart({"params": json.dumps(params)}, {})
    return httpx.post(f"{server.url}/infer/{model}?image={image}", content=body, headers={"content-type": ctype},
                      timeout=120)


def test_nifti_upload_alias_nrrd_result_with_the_image_geometry(trained: dict[str, Any], compat_server: Server,
                                                                tmp_path: Path) -> None:
    import nibabel

    nib: Any = nibabel

    src = hippo_image("003")
    ctype, body = slicer_multipart({"params": json.dumps({"client_id": "user-xyz"})},
                                   {"file": ("tmpk2j3.nii.gz", src.read_bytes())})
    r = httpx.put(f"{compat_server.url}/datastore/?image=MR Head", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    image_id = r.json()["image"]
    assert image_id == "MR-Head"  # the id segloop gives the name; the name still finds it
    img = nib.load(str(src))
    shape, affine = img.shape, img.affine

    ijk = (int(shape[0]) // 2, int(shape[1]) // 3, int(shape[2]) // 2)
    params = {"label": "Anterior", "foreground": [list(ijk)], "background": [], "result_extension": ".nrrd",
              "result_dtype": "uint8"}
    meta, filename, data = parse_answer(infer(compat_server, MODEL + "_interactive", "MR Head", params))
    assert filename.endswith(".nrrd") and "/" not in filename
    assert meta["label_names"] == {"Anterior": 1}
    arr, header = read_nrrd_bytes(data, tmp_path)
    assert arr.shape == shape and arr.dtype == np.uint8
    assert arr[ijk] == 1
    # geometry: voxel ijk of the answer is voxel ijk of the image (LPS in the file, RAS in NIfTI)
    ras = affine @ np.array([*ijk, 1.0])
    assert np.allclose(nrrd_world_lps(header, ijk), ras[:3] * [-1, -1, 1], atol=1e-4)
    directions = np.asarray(header["space directions"], float).T * np.array([[-1], [-1], [1]])
    assert np.allclose(directions, affine[:3, :3], atol=1e-5)

    # the Slicer module saves its segmentation as a labelmap NIfTI with label_info (segments 1..N)
    label = np.zeros(shape, np.uint8)
    label[ijk] = 1
    lab_path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), str(lab_path))
    ctype, body = slicer_multipart({"params": json.dumps({"label_info": [{"name": "Posterior", "idx": 1}],
                                                          "client_id": "user-xyz"})},
                                   {"label": ("tmpab.nii.gz", lab_path.read_bytes())})
    r = httpx.put(f"{compat_server.url}/datastore/label?image=MR Head", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "final"
    got = nib.load(str(_download(compat_server, f"/api/v1/images/{image_id}/labels/latest", tmp_path)))
    assert np.asarray(got.dataobj)[ijk] == 2 and int(np.asarray(got.dataobj).sum()) == 2


def _download(server: Server, path: str, tmp: Path) -> Path:
    r = httpx.get(server.url + path)
    assert r.status_code == 200, r.text
    out = tmp / "download.nii.gz"
    out.write_bytes(r.content)
    return out


# --- DICOM --------------------------------------------------------------------------------------

ROWS, COLS, SLICES = 36, 40, 34
ROW_COS = np.array([0.8660254037844387, 0.5, 0.0])  # along a row (increasing column index)
COL_COS = np.array([0.0, 0.0, -1.0])  # down a column (increasing row index)
PIXEL_SPACING = (0.9, 0.7)  # (between rows, between columns)
STEP = 1.5


def write_oblique_series(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """An oblique MR series whose files are numbered against the slice normal; returns
    (ImagePositionPatient, pixels) per slice in file order."""
    normal = np.cross(ROW_COS, COL_COS)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    written = []
    for n in range(SLICES):
        ipp = np.array([-20.0, 10.0, 30.0]) - n * STEP * normal  # file n lies *below* file n-1
        pixels = rng.integers(0, 1000, size=(ROWS, COLS), dtype=np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{n:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "MR"
        ds.PatientID = "compat-01"
        ds.SeriesDescription = "oblique"
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.ImageOrientationPatient = [float(v) for v in (*ROW_COS, *COL_COS)]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(folder / f"IM{n:04d}.dcm"), enforce_file_format=True)
        written.append((ipp, pixels))
    return written


def test_dicom_series_ijk_is_slicers_ijk(trained: dict[str, Any], compat_server: Server, tmp_path: Path) -> None:
    import nibabel

    nib: Any = nibabel

    folder = tmp_path / "series"
    folder.mkdir()
    written = write_oblique_series(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"series/{f.name}")
    r = httpx.put(f"{compat_server.url}/datastore/image?image=oblique", files={"file": ("series.zip", buf.getvalue())},
                  data={"params": "{}"})
    assert r.status_code == 200, r.text
    image_id = r.json()["image"]
    series_uid = pydicom.dcmread(str(folder / "IM0000.dcm")).SeriesInstanceUID

    # Slicer / ITK / cornerstone3D order: slices ascending along row x column
    normal = np.cross(ROW_COS, COL_COS)
    by_position = sorted(written, key=lambda w: float(np.dot(w[0], normal)))
    ijk = (31, 5, 26)  # i = column, j = row, k = sorted slice

    def lps_of(i: int, j: int, k: int) -> np.ndarray:
        return by_position[k][0] + i * PIXEL_SPACING[1] * ROW_COS + j * PIXEL_SPACING[0] * COL_COS

    # the stored voxel (i, j, k) is pixel (row j, column i) of the k-th slice along the normal
    vol = nib.load(str(_download(compat_server, f"/datastore/image?image={image_id}", tmp_path)))
    data = np.asarray(vol.dataobj)
    assert data.shape == (COLS, ROWS, SLICES)
    assert data[ijk] == by_position[ijk[2]][1][ijk[1], ijk[0]]
    assert np.allclose((vol.affine @ [*ijk, 1.0])[:3] * [-1, -1, 1], lps_of(*ijk), atol=1e-3)

    # a click at that IJK (sent as OHIF does: the image named by its SeriesInstanceUID)
    params = {"label": "Posterior", "foreground": [list(ijk)], "background": [], "result_extension": ".nrrd",
              "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    meta, _, answer = parse_answer(infer(compat_server, MODEL, series_uid, params))
    assert meta["segloop"]["image"] == image_id
    arr, header = read_nrrd_bytes(answer, tmp_path)
    assert header["encoding"] == "raw"  # result_compress: false, as OHIF asks
    assert arr.shape == (COLS, ROWS, SLICES) and arr[ijk] == 2  # schema value of Posterior
    for probe in [ijk, (0, 0, 0), (COLS - 1, ROWS - 1, SLICES - 1)]:
        assert np.allclose(nrrd_world_lps(header, probe), lps_of(*probe), atol=1e-3)

    # OHIF saves its labelmap buffer as raw bytes (first index fastest): the same voxel order
    label = np.zeros((COLS, ROWS, SLICES), np.uint8)
    label[ijk] = 1
    r = httpx.put(f"{compat_server.url}/datastore/label?image={series_uid}",
                  files={"label": ("label.bin", label.tobytes(order="F"))}, data={"params": "{}"})
    assert r.status_code == 200, r.text
    saved = nib.load(str(_download(compat_server, f"/datastore/label?label={image_id}&tag=final", tmp_path)))
    assert np.argwhere(np.asarray(saved.dataobj)).tolist() == [list(ijk)]


def test_bearer_auth_with_the_native_roles(tmp_path_factory: pytest.TempPathFactory) -> None:
    from monailabel.client import MONAILabelClient

    from segloop.server.auth import new_token
    from tests.integration._harness import make_data

    folder = tmp_path_factory.mktemp("compat-auth")
    data = make_data(folder, ("001",))
    annotator, digest = new_token()
    admin, admin_digest = new_token()
    auth = folder / "auth.json"
    auth.write_text(json.dumps({"tokens": [{"name": "ann", "role": "annotator", "sha256": digest},
                                           {"name": "boss", "role": "admin", "sha256": admin_digest}]}))
    srv = Server(data, "--auth", str(auth)).wait_ready()
    try:
        client = MONAILabelClient(srv.url, tmpdir=str(folder))
        with pytest.raises(Exception) as err:  # noqa: B017
            client.info()
        assert "401" in str(getattr(err.value, "msg", err.value))
        client.update_auth({"token_type": "Bearer", "access_token": annotator})
        assert client.info()["datastore"]["total"] == 1
        with pytest.raises(Exception) as err:  # noqa: B017 - training needs the admin role
            client.train_start("m", {"epochs": 1})
        assert "403" in str(getattr(err.value, "msg", err.value))
        # an annotator's "final" save is kept as a draft, and the answer says so
        lab = folder / "src" / "labels" / "hippocampus_001.nii.gz"
        answer = client.save_label("hippocampus_001", str(lab), tag="final")
        assert answer["status"] == "draft" and "reviewer" in answer["note"]
        boss = MONAILabelClient(srv.url, tmpdir=str(folder))
        boss.update_auth({"token_type": "Bearer", "access_token": admin})
        assert boss.save_label("hippocampus_001", str(lab))["status"] == "final"
    finally:
        srv.stop()
