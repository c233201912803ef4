"""DICOM SEG in and out (segloop.imaging.dicom_seg) on the real dcmqi CT + SEG pair."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segloop.imaging import ImagingError, Volume, read_dicom_series
from segloop.imaging.dicom_seg import (
    ANATOMICAL_STRUCTURE,
    TISSUE,
    read_dicom_seg,
    segment_codes,
    write_dicom_seg,
)

CLASSES = [(1, "Liver", (220, 40, 40)), (2, "anterior", (30, 200, 60)), (3, "Kidney", (20, 40, 250))]


@pytest.fixture(scope="module")
def dcmqi(shared_data: Path) -> Path:
    return shared_data / "dicom" / "ct_seg_dcmqi"


@pytest.fixture(scope="module")
def ct(dcmqi: Path) -> Volume:
    return read_dicom_series(dcmqi / "ct-3slice")


@pytest.fixture(scope="module")
def slice_of_sop(dcmqi: Path, ct: Volume) -> dict[str, int]:
    """SOPInstanceUID -> slice index k, from each file's z position (independent of the code under test)."""
    out = {}
    z0, dz = ct.affine[2, 3], ct.affine[2, 2]
    for f in sorted((dcmqi / "ct-3slice").iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = round((float(ds.ImagePositionPatient[2]) - z0) / dz)
    assert sorted(out.values()) == [0, 1, 2]
    return out


def _highdicom_masks(
    path: Path, slice_of_sop: dict[str, int], shape: tuple[int, int, int]
) -> dict[int, np.ndarray]:
    """Per segment number, the boolean mask on the CT grid, as highdicom decodes the SEG."""
    seg = hd.seg.segread(path)
    sops = list(slice_of_sop)
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, ignore_spatial_locations=True)
    numbers = [int(n) for n in seg.segment_numbers]
    out = {n: np.zeros(shape, dtype=bool) for n in numbers}
    for i, sop in enumerate(sops):
        for s, n in enumerate(numbers):
            out[n][:, :, slice_of_sop[sop]] = pix[i, :, :, s].T > 0
    return out


def _label(ct: Volume) -> np.ndarray:
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[100:220, 150:300, 0] = 1
    lab[250:300, 50:90, 1:] = 2
    lab[10:20, 400:420, 2] = 3
    lab[5, 7, 1] = 3
    return lab


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing: run scripts/orthanc.sh install (Debian dicom3tools)")
        pytest.skip("dciodvfy (Debian dicom3tools) not installed; scripts/orthanc.sh install")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


# --- reading the real SEGs ------------------------------------------------------------------


def test_liver_seg_maps_onto_ct_grid_like_highdicom(
    dcmqi: Path, ct: Volume, slice_of_sop: dict[str, int]
) -> None:
    result = read_dicom_seg(dcmqi / "liver.dcm", ct)
    expected = _highdicom_masks(dcmqi / "liver.dcm", slice_of_sop, ct.shape)
    assert result.label.same_grid(ct)
    assert np.array_equal(result.label.array == 1, expected[1])
    assert set(np.unique(result.label.array)) == {0, 1}
    assert result.overlap_voxels == 0
    assert [(s.number, s.label, s.type.value) for s in result.segments] == [(1, "Liver", "T-62000")]
    assert result.segments[0].voxels == int(expected[1].sum()) > 0
    assert result.referenced_series_uid == ct.metadata["series_uid"]


def test_overlapping_segments_highest_number_wins(
    dcmqi: Path, ct: Volume, slice_of_sop: dict[str, int]
) -> None:
    path = dcmqi / "partial_overlaps.dcm"
    result = read_dicom_seg(path, ct)
    masks = _highdicom_masks(path, slice_of_sop, ct.shape)
    expected = np.zeros(ct.shape, dtype=np.uint8)
    for n in sorted(masks):
        expected[masks[n]] = n
    coverage = sum(m.astype(int) for m in masks.values())
    assert np.array_equal(result.label.array, expected)
    assert result.overlap_voxels == int((coverage > 1).sum()) > 0
    assert [s.label for s in result.segments] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert [s.voxels for s in result.segments] == [int(masks[n].sum()) for n in sorted(masks)]
    assert result.notes and "highest segment number" in result.notes[0]
    # exactly what was dropped, per (kept, dropped) pair, counted independently from highdicom's masks
    dropped: dict[tuple[int, int], int] = {}
    for n, mask in masks.items():
        lost = mask & (expected != n)
        for kept, count in zip(*np.unique(expected[lost], return_counts=True), strict=True):
            dropped[(int(kept), n)] = int(count)
    assert {(o.kept, o.dropped): o.voxels for o in result.overlaps} == dropped
    assert all(o.kept > o.dropped for o in result.overlaps)
    assert sum(dropped.values()) >= result.overlap_voxels
    names = {s.number: s.label for s in result.segments}
    first = result.overlaps[0]
    assert first.describe(names).startswith(f"{first.voxels} voxel(s) of segment {first.dropped} {names[first.dropped]!r}")
    assert first.describe(names) in result.notes[0]
    with pytest.raises(ImagingError, match="more than one segment"):
        read_dicom_seg(path, ct, on_overlap="error")


def test_seg_on_another_series_is_refused_naming_uids(dcmqi: Path, shared_data: Path) -> None:
    other = read_dicom_series(shared_data / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume")
    seg_uid = str(pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True).SOPInstanceUID)
    with pytest.raises(ImagingError) as err:
        read_dicom_seg(dcmqi / "liver.dcm", other)
    assert seg_uid in str(err.value) and other.metadata["series_uid"] in str(err.value)


def test_seg_with_mismatched_geometry_is_refused(dcmqi: Path, ct: Volume) -> None:
    shifted = ct.copy()
    shifted.affine[2, 3] += 0.5  # half a slice off
    with pytest.raises(ImagingError, match=r"lies on no slice of image series 1\.2\.392"):
        read_dicom_seg(dcmqi / "liver.dcm", shifted)
    resampled = Volume(ct.array[::2, ::2], ct.affine @ np.diag([2.0, 2.0, 1.0, 1.0]), dict(ct.metadata))
    with pytest.raises(ImagingError, match="frames are 512 x 512"):
        read_dicom_seg(dcmqi / "liver.dcm", resampled)


def test_not_a_seg_is_refused(dcmqi: Path, ct: Volume) -> None:
    with pytest.raises(ImagingError, match="not a DICOM Segmentation"):
        read_dicom_seg(dcmqi / "ct-3slice" / "01.dcm", ct)


# --- writing --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, dcmqi: Path, ct: Volume) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("seg") / "label.seg.dcm"
    files = sorted((dcmqi / "ct-3slice").iterdir(), reverse=True)  # order must not matter
    _, infos = write_dicom_seg(ct.with_array(_label(ct)), CLASSES, files, out, algorithm=("unet", "3"))
    return out, infos


def test_written_seg_passes_dciodvfy(written: tuple[Path, list]) -> None:
    assert _dciodvfy_errors(written[0]) == []


def test_written_seg_loads_back_through_highdicom(
    written: tuple[Path, list], ct: Volume, slice_of_sop: dict[str, int]
) -> None:
    path, _ = written
    lab = _label(ct)
    masks = _highdicom_masks(path, slice_of_sop, ct.shape)
    assert sorted(masks) == [1, 2, 3]
    for number, value in ((1, 1), (2, 2), (3, 3)):
        assert np.array_equal(masks[number], lab == value)
    seg = hd.seg.segread(path)
    assert str(seg.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.66.4"
    refs = {str(uid[2]) for uid in seg.get_source_image_uids()}
    assert refs == set(slice_of_sop)
    assert str(seg.FrameOfReferenceUID) == ct.metadata["frame_of_reference_uid"]
    assert str(seg.StudyInstanceUID) == ct.metadata["study_uid"]


def test_written_seg_segments_names_colours_codes(written: tuple[Path, list]) -> None:
    path, infos = written
    seg = pydicom.dcmread(path)
    items = list(seg.SegmentSequence)
    assert [str(i.SegmentLabel) for i in items] == ["Liver", "anterior", "Kidney"]
    for item, (_, _, rgb) in zip(items, CLASSES, strict=True):
        back = hd.color.CIELabColor.from_dicom_value(
            tuple(int(v) for v in item.RecommendedDisplayCIELabValue)
        ).to_rgb()
        assert np.abs(np.subtract(back, rgb)).max() <= 2
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert items[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert items[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == ANATOMICAL_STRUCTURE.value
    assert items[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == TISSUE.value  # generic rule
    assert items[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert [i.value for i in infos] == [1, 2, 3]


def test_round_trip_through_own_reader(written: tuple[Path, list], ct: Volume) -> None:
    back = read_dicom_seg(written[0], ct)
    assert np.array_equal(back.label.array, _label(ct))
    assert back.overlap_voxels == 0


def test_flipped_label_grid_maps_by_geometry(
    tmp_path: Path, dcmqi: Path, ct: Volume, slice_of_sop: dict[str, int]
) -> None:
    """A label stored with the slice axis reversed (same voxels in space) gives the same SEG content."""
    lab = _label(ct)
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, ct.shape[2] - 1
    flipped = Volume(lab[:, :, ::-1].copy(), ct.affine @ flip, dict(ct.metadata))
    # the flipped volume's slice step is negative; a SEG must still place each slice on its instance
    out = tmp_path / "flipped.dcm"
    write_dicom_seg(flipped, CLASSES, dcmqi / "ct-3slice", out)
    masks = _highdicom_masks(out, slice_of_sop, ct.shape)
    assert np.array_equal(masks[3], lab == 3)


def test_label_not_on_series_grid_is_refused_naming_series(tmp_path: Path, dcmqi: Path, ct: Volume) -> None:
    uid = ct.metadata["series_uid"]
    lab = _label(ct)
    two = Volume(lab[:, :, :2].copy(), ct.affine, dict(ct.metadata))
    with pytest.raises(ImagingError, match=f"does not match source series {uid}.*3 instances, the label 2"):
        write_dicom_seg(two, CLASSES, dcmqi / "ct-3slice", tmp_path / "x.dcm")
    shifted = ct.with_array(lab)
    shifted.affine[2, 3] += 0.4
    with pytest.raises(
        ImagingError, match=f"source series {uid}: no instance at the position of label slice 0"
    ):
        write_dicom_seg(shifted, CLASSES, dcmqi / "ct-3slice", tmp_path / "x.dcm")
    wrong = Volume(lab, ct.affine, {**ct.metadata, "series_uid": "1.2.3.4"})
    with pytest.raises(ImagingError, match=r"series 1\.2\.3\.4 not found"):
        write_dicom_seg(wrong, CLASSES, dcmqi / "ct-3slice", tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_values_without_class_and_empty_labels_are_refused(tmp_path: Path, dcmqi: Path, ct: Volume) -> None:
    lab = _label(ct)
    with pytest.raises(ImagingError, match=r"label values \[3\] have no class"):
        write_dicom_seg(ct.with_array(lab), CLASSES[:2], dcmqi / "ct-3slice")
    with pytest.raises(ImagingError, match="empty"):
        write_dicom_seg(ct.with_array(np.zeros_like(lab)), CLASSES, dcmqi / "ct-3slice")


def test_segment_code_rule() -> None:
    category, prop = segment_codes("liver")
    assert (category.value, prop.value) == (ANATOMICAL_STRUCTURE.value, "10200004")
    assert segment_codes("Adrenal_Gland")[1].meaning.lower() == "adrenal gland"
    assert segment_codes("left kidney") == (TISSUE, TISSUE)  # laterality is not a type concept: generic
    assert segment_codes("Artery")[0] == TISSUE  # a tissue type (CID 7166)
    assert segment_codes("posterior") == (TISSUE, TISSUE)  # not a concept -> generic


# --- datastore: SEG import as a label revision, export of a revision ------------------------


@pytest.fixture
def store_with_ct(tmp_path: Path, dcmqi: Path):  # type: ignore[no-untyped-def]
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore

    store = open_datastore(tmp_path / "store")
    report = import_paths(store, [dcmqi / "ct-3slice"])
    yield store, report.images[0].record
    store.close()


def test_import_seg_creates_revision_and_schema(store_with_ct, dcmqi: Path, ct: Volume) -> None:  # type: ignore[no-untyped-def]
    from segloop.store.seg_import import SEG_SOURCE, import_dicom_seg

    store, record = store_with_ct
    imported = import_dicom_seg(store, dcmqi / "liver.dcm", author="radiologist")
    assert imported.image.id == record.id
    assert (imported.revision.revision, imported.revision.source, imported.revision.status) == (
        1,
        SEG_SOURCE,
        "final",
    )
    assert [(c.value, c.name) for c in store.get_schema().foreground] == [(1, "Liver")]
    stored = store.load_label(record.id)
    expected = read_dicom_seg(dcmqi / "liver.dcm", ct).label.array
    assert np.array_equal(stored.array, expected) and expected.any()
    assert imported.schema_changed and imported.overlap_voxels == 0


def test_import_seg_with_unknown_segments_stores_nothing_unless_extending(
    store_with_ct, dcmqi: Path, ct: Volume
) -> None:  # type: ignore[no-untyped-def]
    from segloop.store.errors import ValidationError
    from segloop.store.seg_import import import_dicom_seg

    store, record = store_with_ct
    import_dicom_seg(store, dcmqi / "liver.dcm")
    schema = store.get_schema()
    with pytest.raises(ValidationError, match=r"GREEN.*not classes of the label schema \['Liver'\]"):
        import_dicom_seg(store, dcmqi / "partial_overlaps.dcm")
    assert store.get_schema() == schema and len(store.list_revisions(record.id)) == 1
    imported = import_dicom_seg(store, dcmqi / "partial_overlaps.dcm", extend_schema=True, status="draft")
    assert imported.revision.revision == 2 and imported.revision.parent == 1
    assert imported.value_of_segment == {1: 2, 2: 3, 3: 4, 4: 5, 5: 6}
    assert imported.overlap_voxels == read_dicom_seg(dcmqi / "partial_overlaps.dcm", ct).overlap_voxels > 0
    stored = store.load_label(record.id).array
    seg_numbers = read_dicom_seg(dcmqi / "partial_overlaps.dcm", ct).label.array
    assert np.array_equal(stored, np.where(seg_numbers > 0, seg_numbers + 1, 0))
    assert [c.name for c in store.get_schema().foreground] == [
        "Liver",
        "GREEN",
        "ORANGE",
        "PURPLE",
        "LIGHT_BLUE",
        "DARK_BLUE",
    ]


def test_import_seg_for_series_not_in_store_is_refused(tmp_path: Path, dcmqi: Path) -> None:
    from segloop.store.local import open_datastore
    from segloop.store.seg_import import import_dicom_seg

    store = open_datastore(tmp_path / "empty")
    with pytest.raises(
        ImagingError,
        match=r"references series 1\.2\.392\.200103\.20080913\.113635\.1\..*not in the datastore",
    ):
        import_dicom_seg(store, dcmqi / "liver.dcm")
    assert store.get_schema().foreground == ()
    store.close()


def test_export_revision_as_seg(
    store_with_ct, tmp_path: Path, dcmqi: Path, ct: Volume, shared_data: Path
) -> None:  # type: ignore[no-untyped-def]
    from segloop.store.seg_import import export_dicom_seg

    store, record = store_with_ct
    from segloop.store.records import LabelClass, LabelSchema

    store.set_schema(
        LabelSchema((LabelClass(1, "Liver", (200, 80, 60)), LabelClass(2, "Kidney", (0, 0, 255))))
    )
    lab = _label(ct)
    lab[lab == 3] = 2
    store.save_label(record.id, lab, author="a", source="model:unet@4", status="final")
    out = tmp_path / "export.dcm"
    ds, infos = export_dicom_seg(store, record.id, None, dcmqi, out)  # the folder also holds the SEGs
    assert [(i.value, i.label) for i in infos] == [(1, "Liver"), (2, "Kidney")]
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName) == "unet"
    assert np.array_equal(read_dicom_seg(out, ct).label.array, lab)
    assert _dciodvfy_errors(out) == []
    with pytest.raises(ImagingError, match=f"source DICOM series {ct.metadata['series_uid']} not found"):
        export_dicom_seg(
            store,
            record.id,
            1,
            shared_data / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume",
            tmp_path / "x.dcm",
        )


# --- headers kept at import: SEG export needs no source folder ----------------------------------


def test_import_keeps_headers_and_slice_order_so_export_needs_no_source(
    store_with_ct, tmp_path: Path, dcmqi: Path, ct: Volume, slice_of_sop: dict[str, int]
) -> None:  # type: ignore[no-untyped-def]
    from segloop.store.ingest import HEADERS_KIND
    from segloop.store.records import LabelClass, LabelSchema
    from segloop.store.seg_import import export_dicom_seg

    store, record = store_with_ct
    by_slice = sorted(slice_of_sop, key=lambda sop: slice_of_sop[sop])
    assert record.metadata["sop_instance_uids"] == by_slice
    headers = sorted(store.attachments_dir(record.id, HEADERS_KIND).iterdir())
    assert [str(pydicom.dcmread(h).SOPInstanceUID) for h in headers] == by_slice
    assert all("PixelData" not in pydicom.dcmread(h) for h in headers)
    store.set_schema(LabelSchema((LabelClass(1, "Liver", (200, 80, 60)),)))
    lab = (_label(ct) == 1).astype(np.uint8)
    store.save_label(record.id, lab, author="a", status="final")
    out = tmp_path / "no-source.dcm"
    export_dicom_seg(store, record.id, None, None, out)
    assert np.array_equal(read_dicom_seg(out, ct).label.array, lab)
    folder = store.attachments_dir(record.id, HEADERS_KIND)
    store.delete_image(record.id)
    assert not folder.exists() and not folder.parent.exists()


def test_export_without_headers_names_the_reason(tmp_path: Path, ct: Volume) -> None:
    from segloop.store.errors import ValidationError
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema
    from segloop.store.seg_import import export_dicom_seg

    store = open_datastore(tmp_path / "s")
    record = store.add_image(Volume(ct.array, ct.affine, {}), name="plain", source="file:plain.nii.gz")
    store.set_schema(LabelSchema((LabelClass(1, "Liver", (200, 80, 60)),)))
    store.save_label(record.id, np.zeros(ct.shape, np.uint8), author="a")
    with pytest.raises(ValidationError, match="plain.*not imported from DICOM"):
        export_dicom_seg(store, record.id, None, None, tmp_path / "x.dcm")
    store.close()


def test_failed_import_leaves_no_headers(tmp_path: Path, dcmqi: Path) -> None:
    from segloop.store.ingest import IngestError, import_paths
    from segloop.store.local import open_datastore

    store = open_datastore(tmp_path / "s")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(IngestError):
        import_paths(store, [dcmqi / "ct-3slice", bad])
    assert store.list_images() == []
    assert [p for p in (tmp_path / "s").rglob("*.dcm")] == []
    store.close()


# --- de-identification ----------------------------------------------------------------------


def test_deidentified_import_keeps_geometry_and_drops_identifiers(tmp_path: Path, dcmqi: Path, ct: Volume) -> None:
    import json
    import re

    from segloop.store.ingest import HEADERS_KIND, import_paths
    from segloop.store.local import open_datastore

    original = pydicom.dcmread(sorted((dcmqi / "ct-3slice").iterdir())[0], stop_before_pixels=True)
    store = open_datastore(tmp_path / "s")
    mapping = tmp_path / "private" / "map.json"
    record = import_paths(store, [dcmqi / "ct-3slice"], deidentify=True, deid_map=mapping).images[0].record
    # geometry and voxels unchanged
    image = store.load_image(record.id)
    assert np.array_equal(image.array, ct.array) and np.allclose(image.affine, ct.affine)
    # nothing identifying in the database metadata, the name or the source
    # (whole tokens: the sample's PatientID is "99000", which a fresh random UID's digits can hold by chance)
    text = json.dumps(record.metadata) + " " + record.name + " " + record.source + " " + record.id
    for value in (str(original.PatientID), str(original.StudyInstanceUID), str(original.SeriesInstanceUID),
                  str(original.StudyDate)):
        assert re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text) is None, value
    assert record.metadata["patient_id"].startswith("ANON-") and record.metadata["deidentified"] is True
    # the kept headers on disk: identifiers replaced, dates/private tags gone, geometry kept
    headers = sorted(store.attachments_dir(record.id, HEADERS_KIND).iterdir())
    raw = b"".join(h.read_bytes() for h in headers)
    for value in (str(original.PatientID), str(original.StudyInstanceUID), str(original.SOPInstanceUID)):
        assert re.search(rb"(?<![0-9A-Za-z])" + re.escape(value.encode()) + rb"(?![0-9A-Za-z])", raw) is None, value
    ds = pydicom.dcmread(headers[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == record.metadata["patient_id"]
    assert ds.get("StudyDate", "") == "" and ds.get("PatientBirthDate", "") == "" and "InstitutionName" not in ds
    assert not any(el.tag.is_private for el in ds.iterall())
    assert ds.SeriesInstanceUID == record.metadata["series_uid"]
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert [float(v) for v in ds.ImageOrientationPatient] == [float(v) for v in original.ImageOrientationPatient]
    # the mapping exists only because it was asked for, readable by its owner only
    saved = json.loads(mapping.read_text())
    assert saved["patients"][str(original.PatientID)] == ds.PatientID
    assert saved["uids"][str(original.SeriesInstanceUID)] == ds.SeriesInstanceUID
    assert mapping.stat().st_mode & 0o077 == 0
    # a second import with the same map gets the same pseudonyms (no duplicate UIDs from the map)
    again = import_paths(store, [dcmqi / "ct-3slice"], deidentify=True, deid_map=mapping).images[0].record
    assert again.metadata["series_uid"] == record.metadata["series_uid"]
    assert again.metadata["patient_id"] == record.metadata["patient_id"]
    store.close()


def test_deidentified_import_without_map_writes_none(tmp_path: Path, dcmqi: Path) -> None:
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore

    store = open_datastore(tmp_path / "s")
    before = set(tmp_path.rglob("*"))
    import_paths(store, [dcmqi / "ct-3slice"], deidentify=True)
    assert not [p for p in set(tmp_path.rglob("*")) - before if p.suffix == ".json"]
    store.close()


# --- issue 17: sources that import fine but were refused with the wrong reason -----------------


def _enhanced_mr(files: list[Path], out: Path) -> Path:
    """One Enhanced MR Image Storage instance made from a single-frame series (frames in reverse
    slice order, so the SEG must follow the source's frame order, not the label's)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slices = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))[::-1]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "FrameOfReferenceUID",
                    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 77, 1
    ds.Modality, ds.SeriesDescription = "MR", "enhanced copy"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = len(slices)
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20200101", "120000", "20200101120000"
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.get("SliceThickness", 1)
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = Seq([measures])
    shared.PlaneOrientationSequence = Seq([orientation])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    per_frame = []
    for n, sl in enumerate(slices):
        position = Dataset()
        position.ImagePositionPatient = sl.ImagePositionPatient
        content = Dataset()
        content.DimensionIndexValues = [n + 1]
        item = Dataset()
        item.PlanePositionSequence = Seq([position])
        item.FrameContentSequence = Seq([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(per_frame)
    ds.PixelData = np.stack([sl.pixel_array for sl in slices]).tobytes()
    path = out / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_source_exports_a_seg_that_reads_back(tmp_path: Path, shared_data: Path) -> None:
    crop = shared_data / "dicom" / "mr_brain_tcia_pgbm" / "Study1" / "13_HCropVolume"
    source = _enhanced_mr(sorted(crop.iterdir()), tmp_path)
    image = read_dicom_series(source)
    np.testing.assert_array_equal(image.array, read_dicom_series(crop).array)  # the same volume
    label = np.zeros(image.shape, dtype=np.uint8)
    label[5:20, 10:30, 3:12] = 1
    label[20:30, 5:15, 20:25] = 2
    seg, segments = write_dicom_seg(Volume(label, image.affine, {}), [(1, "Liver", (200, 0, 0)), (2, "Spleen", (0, 200, 0))],
                                    [source], tmp_path / "seg.dcm")
    assert [s.label for s in segments] == ["Liver", "Spleen"]
    back = read_dicom_seg(pydicom.dcmread(tmp_path / "seg.dcm"), image)
    np.testing.assert_array_equal(back.label.array, label)
    # the SEG references the multi-frame instance, frame by frame
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(source).SeriesInstanceUID


def test_mosaic_source_is_refused_naming_the_mosaic(tmp_path: Path, shared_data: Path) -> None:
    mosaic = shared_data / "dicom" / "transfer_syntaxes_dcm_qa_ts" / "In" / "1.dcm"
    image = read_dicom_series(mosaic)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[10:20, 10:20, 5:9] = 1
    with pytest.raises(ImagingError, match="Siemens mosaic") as err:
        write_dicom_seg(Volume(label, image.affine, {}), [(1, "Liver", (200, 0, 0))], [mosaic], tmp_path / "s.dcm")
    assert "384x384" in str(err.value) and "NIfTI or NRRD" in str(err.value)
    assert not (tmp_path / "s.dcm").exists()


def test_blank_uid_source_is_refused_naming_the_blank_uids(tmp_path: Path, shared_data: Path) -> None:
    from segloop.store.errors import ValidationError
    from segloop.store.ingest import import_paths
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema
    from segloop.store.seg_import import export_dicom_seg

    ct_dir = shared_data / "dicom" / "ct_totalsegmentator_example" / "example_ct_dicom"
    for deidentify in (False, True):
        store = open_datastore(tmp_path / f"store-{deidentify}")
        (item,) = import_paths(store, [ct_dir], deidentify=deidentify).images
        store.set_schema(LabelSchema((LabelClass(1, "Liver", (200, 0, 0)),)))
        label = np.zeros(item.record.shape, dtype=np.uint8)
        label[100:200, 100:200, 5:10] = 1
        store.save_label(item.record.id, label, author="t")
        with pytest.raises(ValidationError, match="SeriesInstanceUID is blank") as err:
            export_dicom_seg(store, item.record.id, None, None, tmp_path / "seg.dcm")
        assert "not imported from DICOM" not in str(err.value) and "--deidentify" in str(err.value)
        store.close()
    # the same headers given as a folder: the blank UIDs are named
    image = read_dicom_series(ct_dir)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[100:200, 100:200, 5:10] = 1
    with pytest.raises(ImagingError, match="blank UIDs .*SeriesInstanceUID, SOPInstanceUID, SOPClassUID"):
        write_dicom_seg(Volume(label, image.affine, {}), [(1, "Liver", (200, 0, 0))], ct_dir, series_uid="")
