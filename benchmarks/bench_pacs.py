"""PACS benchmark: a ~200-slice series over DICOMweb (Orthanc on loopback), cold and warm, and
STOW-RS of its SEG, each next to what Orthanc takes to serve/accept the same bytes to/from a plain
HTTP client in the same run.

The series: the real CT header of ``../shared/data/dicom/ct_seg_dcmqi/ct-3slice`` (512 x 512,
0.81 mm pixels) repeated as ``--slices`` synthetic slices (new UIDs, positions one slice
thickness apart, a smooth int16 phantom as pixels), stored into a fresh Orthanc (auth on,
``tests/pacs/orthanc.py``) with STOW-RS.

Measured (median of ``--repeat`` runs; cold runs each start from an empty data folder):

* **first image, cold** — ``GET /api/v1/images/{id}/preview`` on a new app (nothing fetched):
  the middle slice alone (QIDO-RS of the instances, WADO-RS of one), what the web app draws
  while the series comes, then ``/volume`` as the web app asks for it next (timed from the
  start); and, on another new app, both asked for at the same moment (each slows the other on a
  2-core machine: why the web app asks in turn);
* **first view, cold** — ``GET /api/v1/images/{id}/volume`` on segloop (in-process app, DICOMweb
  datastore): QIDO lookup, WADO-RS of every instance, decoding, registering the series locally
  (volume + headers), then the gzip NIfTI response the viewer loads;
* **first view, warm** — the same request to a new app on the same data folder (the series is
  on local disk from the cold run; nothing in the server's memory), and the request repeated in
  the same app (whatever the server keeps in memory);
* **datastore only** — `DicomWebDatastore.load_image` cold / warm (no HTTP response encoding);
* **plain WADO-RS** — ``requests.get`` of the series' multipart body from Orthanc, bytes only:
  what Orthanc itself takes to serve the same instances;
* **SEG** — building the SEG of a label on the series (headers kept at fetch), STOW-RS through
  segloop (`DicomWebSource.store_seg`), and a plain ``requests.post`` of the same SEG bytes as a
  multipart STOW body (each with a fresh SOPInstanceUID).

Usage::

    .venv/bin/python benchmarks/bench_pacs.py --out benchmarks/results/pacs.json
    .venv/bin/python benchmarks/bench_pacs.py --slices 20 --repeat 1     # quick check
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import requests
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.pacs.orthanc import OrthancServer  # noqa: E402

from benchlib import base_result, med, timed, write_json  # noqa: E402
from segloop.imaging.dicom import read_dicom_series  # noqa: E402
from segloop.imaging.volume import middle_slice  # noqa: E402
from segloop.server import ServerSettings, create_app  # noqa: E402
from segloop.store.dicomweb import DicomWebSource  # noqa: E402
from segloop.store.dicomweb_store import DicomWebDatastore, series_image_id  # noqa: E402
from segloop.store.records import LabelClass, LabelSchema  # noqa: E402
from segloop.store.seg_import import export_dicom_seg  # noqa: E402

CT = ROOT.parent / "shared" / "data" / "dicom" / "ct_seg_dcmqi" / "ct-3slice"


def synthetic_series(n: int) -> list[pydicom.Dataset]:
    """``n`` slices from a real CT header: new UIDs, positions one thickness apart, a phantom."""
    template = pydicom.dcmread(sorted(CT.iterdir())[0])
    rows, cols = int(template.Rows), int(template.Columns)
    thickness = float(template.get("SliceThickness") or 1.0) or 1.0
    origin = [float(v) for v in template.ImagePositionPatient]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    rng = np.random.default_rng(0)
    out: list[pydicom.Dataset] = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = f"bench {n} slices"
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * thickness]
        ds.SliceLocation = origin[2] + k * thickness
        r = np.hypot(yy - rows / 2, xx - cols / 2)
        body = np.where(r < rows * (0.3 + 0.1 * np.sin(k / 15)), 40.0, -1000.0)
        pixels = (body + rng.normal(0, 20, size=body.shape) + 1024).astype(np.int16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = f"segloop-{generate_uid()[-12:]}"
    buf = io.BytesIO()
    for p in parts:
        buf.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        buf.write(p)
        buf.write(b"\r\n")
    buf.write(f"--{boundary}--\r\n".encode())
    return buf.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def same_voxels(nifti_gz: bytes, reference: Any, what: str) -> None:
    """The NIfTI bytes a view answered hold exactly the reference voxels and affine."""
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_gz))
    data = np.asarray(img.dataobj)
    if data.dtype != reference.array.dtype or not np.array_equal(data, reference.array):
        raise AssertionError(f"{what}: voxels differ from the local import of the same files")
    np.testing.assert_allclose(img.affine, reference.affine, atol=1e-4, err_msg=what)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    results: dict[str, Any] = {
        **base_result(started=False),
        "slices": args.slices,
        "repeat": args.repeat,
    }
    try:
        with OrthancServer(folder=work / "orthanc") as orthanc:
            auth = orthanc.auth
            datasets = synthetic_series(args.slices)
            study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
            results["series_bytes"] = sum(len(dicom_bytes(d)) for d in datasets)
            uploader = DicomWebSource(orthanc.dicomweb_url, work / "upload-cache", auth=auth)
            t, _ = timed(uploader.store_instances, datasets)
            results["stow_series_s"] = t
            image_id = series_image_id(series)
            wado_url = f"{orthanc.dicomweb_url}/studies/{study}/series/{series}"
            accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            plain = requests.Session()
            plain.auth = auth

            # the same instances imported from local files: the voxels every path must give
            local_dir = work / "local-files"
            local_dir.mkdir()
            for n, d in enumerate(datasets):
                d.save_as(local_dir / f"{n:04d}.dcm", enforce_file_format=True)
            reference = read_dicom_series(local_dir)

            middle = middle_slice(reference)
            rows: dict[str, list[float]] = {k: [] for k in (
                "api_cold", "api_warm", "api_again", "store_cold", "store_warm", "plain_wado",
                "api_preview", "api_cold_after_preview", "api_preview_beside", "api_cold_beside")}
            steps: dict[str, list[float]] = {}
            volume_bytes: dict[str, int] = {}
            wado_bytes = 0
            for run in range(args.repeat):
                # plain HTTP client: Orthanc serving the same instances
                t, r = timed(plain.get, wado_url, headers=accept, timeout=300)
                r.raise_for_status()
                wado_bytes = len(r.content)
                rows["plain_wado"].append(t)
                # segloop over HTTP (in-process app), a fresh data folder each run
                settings = ServerSettings(data=work / f"api-{run}", job_mode="thread",
                                          dicomweb_url=orthanc.dicomweb_url, dicomweb_auth=auth)


                app = create_app(settings)
                with TestClient(app) as client:
                    t, resp = timed(client.get, f"/api/v1/images/{image_id}/volume")
                    assert resp.status_code == 200, resp.text
                    rows["api_cold"].append(t)
                    volume_bytes["cold"] = len(resp.content)
                    same_voxels(resp.content, reference, "first view, cold")
                    fetch = dict(app.state.segloop.store.last_fetch.get("seconds", {}))
                    fetch["response"] = t - sum(v for k, v in fetch.items() if k != "register_background")
                    t, resp = timed(client.get, f"/api/v1/images/{image_id}/volume")
                    assert resp.status_code == 200
                    same_voxels(resp.content, reference, "same view again")
                    rows["api_again"].append(t)
                    app.state.segloop.store.settle()  # the background registration, off the view's path
                    fetch.update(app.state.segloop.store.last_fetch.get("seconds", {}))
                    for k, v in fetch.items():
                        steps.setdefault(k, []).append(v)
                # what the web app does: the middle slice first (the first image), then the series,
                # on a new server (nothing fetched)
                settings_p = ServerSettings(data=work / f"api-{run}-preview", job_mode="thread",
                                            dicomweb_url=orthanc.dicomweb_url, dicomweb_auth=auth)
                with TestClient(create_app(settings_p)) as client:
                    t0 = time.perf_counter()
                    t, resp = timed(client.get, f"/api/v1/images/{image_id}/preview")
                    assert resp.status_code == 200, resp.text
                    same_voxels(resp.content, middle, "first image (middle slice)")
                    rows["api_preview"].append(t)
                    resp = client.get(f"/api/v1/images/{image_id}/volume")
                    rows["api_cold_after_preview"].append(time.perf_counter() - t0)
                    same_voxels(resp.content, reference, "first view after the middle slice")
                    client.app.state.segloop.store.settle()  # type: ignore[attr-defined]
                # both asked for at once (what the web app did first: each slows the other on 2 cores)
                settings_b = ServerSettings(data=work / f"api-{run}-both", job_mode="thread",
                                            dicomweb_url=orthanc.dicomweb_url, dicomweb_auth=auth)
                with TestClient(create_app(settings_b)) as client, ThreadPoolExecutor(2) as pool:
                    t0 = time.perf_counter()

                    def get(path: str, t0: float = t0, client: Any = client) -> tuple[Any, float]:
                        r = client.get(path)
                        return r, time.perf_counter() - t0

                    f_volume = pool.submit(get, f"/api/v1/images/{image_id}/volume")
                    f_preview = pool.submit(get, f"/api/v1/images/{image_id}/preview")
                    (r_volume, t_volume), (r_preview, t_preview) = f_volume.result(), f_preview.result()
                    assert r_volume.status_code == 200 and r_preview.status_code == 200
                    same_voxels(r_preview.content, middle, "first image beside the series")
                    same_voxels(r_volume.content, reference, "first view beside the middle slice")
                    rows["api_preview_beside"].append(t_preview)
                    rows["api_cold_beside"].append(t_volume)
                    app_b_store = client.app.state.segloop.store  # type: ignore[attr-defined]
                    app_b_store.settle()
                # a new server on the same data folder: the series is on local disk, not in memory
                with TestClient(create_app(settings)) as client:
                    t, resp = timed(client.get, f"/api/v1/images/{image_id}/volume")
                    assert resp.status_code == 200
                    volume_bytes["warm"] = len(resp.content)
                    same_voxels(resp.content, reference, "first view, warm")
                    rows["api_warm"].append(t)
                # the datastore alone
                store = DicomWebDatastore.open(work / f"store-{run}", orthanc.dicomweb_url, auth=auth)
                t, image = timed(store.load_image, image_id)
                rows["store_cold"].append(t)
                store.settle()
                t, again = timed(store.load_image, image_id)
                rows["store_warm"].append(t)
                np.testing.assert_array_equal(image.array, reference.array)
                np.testing.assert_array_equal(again.array, reference.array)
                if run < args.repeat - 1:
                    store.close()
            assert image.shape == (int(datasets[0].Columns), int(datasets[0].Rows), args.slices)

            # SEG of a label on the series: build, STOW through segloop, plain STOW of the same bytes
            store.set_schema(LabelSchema((LabelClass(1, "Liver", (200, 80, 60)),)))
            label = (image.array > -500).astype(np.uint8)
            store.save_label(image_id, label, author="bench", status="final")
            seg_rows: dict[str, list[float]] = {"seg_build": [], "stow_segloop": [], "stow_plain": []}
            seg_bytes = 0
            for run in range(args.repeat):
                t, (ds, _) = timed(export_dicom_seg, store, image_id, None, None, work / f"seg-{run}.dcm")
                seg_rows["seg_build"].append(t)
                seg = copy.deepcopy(ds)
                seg.SOPInstanceUID = generate_uid()
                seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
                t, _ = timed(store.source.store_seg, seg)
                seg_rows["stow_segloop"].append(t)
                again = copy.deepcopy(ds)
                again.SOPInstanceUID = generate_uid()
                again.file_meta.MediaStorageSOPInstanceUID = again.SOPInstanceUID
                raw = dicom_bytes(again)
                seg_bytes = len(raw)
                body, ctype = multipart([raw])
                t, r = timed(plain.post, f"{orthanc.dicomweb_url}/studies", data=body,
                             headers={"Content-Type": ctype, "Accept": "application/dicom+json"}, timeout=300)
                r.raise_for_status()
                seg_rows["stow_plain"].append(t)
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["wado_bytes"] = wado_bytes
    results["volume_response_bytes"] = volume_bytes
    results["voxels_identical_to_local_import"] = True  # checked above (an assertion otherwise)
    results["cold_breakdown_seconds"] = {k: {"median": med(v), "runs": v} for k, v in steps.items()}
    results["seg_bytes"] = seg_bytes
    results["seconds"] = {k: {"median": med(v), "runs": v} for k, v in {**rows, **seg_rows}.items()}
    s = {k: v["median"] for k, v in results["seconds"].items()}
    print(f"\nPACS benchmark: {args.slices}-slice CT series ({results['series_bytes'] / 1e6:.1f} MB DICOM), "
          f"Orthanc on loopback, {os.cpu_count()} CPUs, load average {results['loadavg_at_start'][0]:.2f}; "
          f"medians of {args.repeat} run(s)")
    print(f"{'what':58s} {'segloop':>9s} {'Orthanc to plain HTTP':>22s} {'ratio':>6s}")
    table = [
        ("first image, cold (GET preview: the middle slice)", s["api_preview"], s["plain_wado"]),
        ("  then the whole series (as the web app: from the start)", s["api_cold_after_preview"], s["plain_wado"]),
        ("first image, asked at once with the series", s["api_preview_beside"], s["plain_wado"]),
        ("whole series, cold (GET volume: WADO + decode + store)", s["api_cold"], s["plain_wado"]),
        ("  the series, asked at once with the middle slice", s["api_cold_beside"], s["plain_wado"]),
        ("first view, warm (new server, series on local disk)", s["api_warm"], s["plain_wado"]),
        ("same view again in the same server", s["api_again"], s["plain_wado"]),
        ("datastore load_image, cold", s["store_cold"], s["plain_wado"]),
        ("datastore load_image, warm", s["store_warm"], s["plain_wado"]),
        ("STOW-RS of the SEG", s["stow_segloop"], s["stow_plain"]),
    ]
    for name, ours, theirs in table:
        print(f"{name:58s} {ours:8.3f}s {theirs:21.3f}s {ours / theirs:6.2f}")
    print(f"{'building the SEG (export_dicom_seg)':58s} {s['seg_build']:8.3f}s")
    print(f"bytes: WADO multipart {wado_bytes / 1e6:.1f} MB, volume response cold "
          f"{volume_bytes['cold'] / 1e6:.1f} MB / warm {volume_bytes['warm'] / 1e6:.1f} MB, "
          f"SEG {seg_bytes / 1e3:.0f} kB; initial STOW of the series {results['stow_series_s']:.2f}s")
    print("voxels of every view and load identical to reading the same files locally (read_dicom_series)")
    print("\nwhere the cold first view goes (medians, seconds):")
    names = {
        "wado": "WADO-RS transfer (request to last byte, less parsing)",
        "parse": "parse the instances as they arrive (pydicom, once)",
        "scan": "group, sort, geometry checks",
        "decode": "decode pixels, stack, rescale",
        "headers": "write the instances' headers (cut before pixels)",
        "view_file": "NIfTI view file (gzip level 0, no fsync)",
        "response": "the rest: QIDO lookup, HTTP response",
        "register_background": "local copy (gzip level 1) + headers, in the background",
    }
    for key, text in names.items():
        if key in results["cold_breakdown_seconds"]:
            print(f"  {text:52s} {results['cold_breakdown_seconds'][key]['median']:8.3f}s")
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
