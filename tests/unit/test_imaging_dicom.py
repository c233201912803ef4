"""segloop.imaging.dicom on the real DICOM sets in shared/data/dicom and on edited copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from segloop.imaging import ImagingError
from segloop.imaging.dicom import DicomSeries, read_dicom_series, scan_dicom

MR1 = "mr_brain_tcia_pgbm/Study1/12-T1post-05670"
MR3 = "mr_brain_tcia_pgbm/Study3/11-T1post-18670"
CROP = "mr_brain_tcia_pgbm/Study1/13_HCropVolume"
TS_CT = "ct_totalsegmentator_example/example_ct_dicom"
CT3 = "ct_seg_dcmqi/ct-3slice"
QA_TS = "transfer_syntaxes_dcm_qa_ts/In"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def dicom_root(shared_data: Path) -> Path:
    return shared_data / "dicom"


# ----------------------------------------------------------------------------------------------
# Every folder of shared/data/dicom
# ----------------------------------------------------------------------------------------------

# folder -> (number of volumes, shape of each, skipped file names)
EXPECTED = {
    MR1: (1, (512, 512, 22), set()),
    MR3: (1, (280, 320, 22), set()),  # 320 rows x 280 columns -> (columns, rows, slices)
    CROP: (1, (35, 51, 32), set()),
    TS_CT: (1, (512, 512, 20), set()),
    CT3: (1, (512, 512, 3), set()),
    QA_TS: (9, (64, 64, 35), set()),
    "ct_seg_dcmqi": (0, None, {"liver.dcm", "partial_overlaps.dcm"}),
}


def test_expected_table_covers_every_dicom_folder(dicom_root: Path) -> None:
    folders = {p.parent.relative_to(dicom_root).as_posix() for p in files(dicom_root)}
    assert folders == set(EXPECTED)


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_every_dicom_folder_imports_or_is_skipped_with_a_reason(dicom_root: Path, folder: str) -> None:
    n_volumes, shape, skipped_names = EXPECTED[folder]
    here = [p for p in files(dicom_root / folder) if p.parent == dicom_root / folder]
    scan = scan_dicom(here, root=dicom_root)
    assert scan.errors == []
    assert {p.name for p, _ in scan.skipped} == skipped_names
    for _, reason in scan.skipped:
        assert "DICOM Segmentation (SEG)" in reason and "not an image" in reason
    assert len(scan.series) == n_volumes
    for series in scan.series:
        volume = series.read()
        assert volume.shape == shape
        assert volume.metadata["format"] == "dicom"
        assert volume.metadata["source_paths"] == len(series.paths)
        assert np.isfinite(volume.affine).all() and abs(np.linalg.det(volume.affine[:3, :3])) > 0
        for key in (
            "modality",
            "patient_id",
            "patient_name",
            "study_uid",
            "series_uid",
            "series_description",
            "study_date",
            "manufacturer",
            "frame_of_reference_uid",
        ):
            assert key in volume.metadata


def test_metadata_from_headers(dicom_root: Path) -> None:
    volume = read_dicom_series(dicom_root / MR1)
    assert volume.metadata["modality"] == "MR"
    assert volume.metadata["patient_id"] == "PGBM-002"
    assert volume.metadata["series_description"] == "T1post"
    assert volume.metadata["series_uid"].startswith("1.3.6.1.4.1.14519")
    assert volume.metadata["manufacturer"].upper().startswith("GE")
    assert volume.metadata["source_paths"] == 22


# ----------------------------------------------------------------------------------------------
# Oblique series agree with SimpleITK
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [MR1, MR3])
def test_oblique_series_matches_simpleitk(dicom_root: Path, folder: str) -> None:
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(dicom_root / folder))
    image = sitk.ReadImage(names)
    itk_array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))  # (z,y,x) -> (x,y,z)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    itk_affine = LPS_TO_RAS @ lps

    volume = read_dicom_series(dicom_root / folder)
    assert volume.shape == itk_array.shape
    np.testing.assert_array_equal(volume.array.astype(np.float64), itk_array.astype(np.float64))
    np.testing.assert_allclose(volume.affine, itk_affine, atol=2e-3)
    # the series really is oblique, and stays so (no resampling to the axes)
    rotation = volume.affine[:3, :3] / np.array(volume.spacing)
    assert np.abs(rotation[np.abs(rotation) < 0.9]).max() > 0.15
    assert volume.spacing[2] == pytest.approx(6.5, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# dcm_qa_ts: 9 transfer syntaxes, each a Siemens mosaic
# ----------------------------------------------------------------------------------------------


def test_transfer_syntaxes_decode_identically_each_its_own_mosaic_volume(dicom_root: Path) -> None:
    scan = scan_dicom(files(dicom_root / QA_TS), root=dicom_root)
    assert scan.errors == [] and scan.skipped == []
    assert len(scan.series) == 9
    assert len({s.name for s in scan.series}) == 9
    by_file = {s.paths[0].name: s for s in scan.series}
    assert set(by_file) == {f"{i}.dcm" for i in range(1, 10)}
    syntaxes = {name: s.transfer_syntaxes[0] for name, s in by_file.items()}
    assert syntaxes["3.dcm"] == pydicom.uid.ExplicitVRBigEndian
    assert syntaxes["4.dcm"] == pydicom.uid.RLELossless
    assert syntaxes["9.dcm"] == pydicom.uid.JPEG2000Lossless
    assert syntaxes["7.dcm"] == pydicom.uid.JPEGLSLossless
    assert len(set(syntaxes.values())) >= 7

    reference = by_file["1.dcm"].read()
    assert reference.shape == (64, 64, 35)  # "ax_asc_35sl": 35 slices
    assert all(s.layout == "mosaic" for s in scan.series)
    for name, series in by_file.items():
        volume = series.read()
        np.testing.assert_array_equal(volume.array, reference.array, err_msg=name)
        np.testing.assert_allclose(volume.affine, reference.affine, err_msg=name)

    # mosaic tiles (6 x 6 grid of 64 x 64) land in the right slices, transposed to (columns, rows)
    raw = pydicom.dcmread(dicom_root / QA_TS / "1.dcm").pixel_array
    for k in (0, 1, 6, 17, 34):
        r, c = divmod(k, 6)
        np.testing.assert_array_equal(
            reference.array[:, :, k], raw[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64].T
        )

    # geometry: in-plane 3.25 mm, slices 3.6 mm apart along the slice normal
    assert reference.spacing == pytest.approx((3.25, 3.25, 3.6), abs=1e-3)
    ds = pydicom.dcmread(dicom_root / QA_TS / "1.dcm", stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    normal_ras = np.cross(iop[:3], iop[3:]) * np.array([-1, -1, 1])
    k_dir = reference.affine[:3, 2] / np.linalg.norm(reference.affine[:3, 2])
    assert abs(float(np.dot(k_dir, normal_ras))) == pytest.approx(1.0, abs=1e-3)
    i_dir = reference.affine[:3, 0] / np.linalg.norm(reference.affine[:3, 0])
    np.testing.assert_allclose(i_dir, iop[:3] * np.array([-1, -1, 1]), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Blank-UID CT (TotalSegmentator)
# ----------------------------------------------------------------------------------------------


def test_blank_uid_ct_groups_into_one_volume_with_hu(dicom_root: Path) -> None:
    folder = dicom_root / TS_CT
    scan = scan_dicom(files(folder), root=dicom_root)
    assert scan.errors == [] and len(scan.series) == 1
    series = scan.series[0]
    volume = series.read()
    assert volume.metadata["series_uid"] == ""
    assert volume.shape == (512, 512, 20)
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.affine[2, 2] == pytest.approx(2.0)  # slices sorted inferior -> superior
    assert volume.affine[2, 3] == pytest.approx(-804.5)
    assert volume.orientation == ("L", "P", "S")
    assert np.issubdtype(volume.array.dtype, np.signedinteger)
    # rescale applied: HU = stored * 1 - 1024, slice 0 is the file at z = -804.5
    first = pydicom.dcmread(series.paths[0])
    assert float(first.ImagePositionPatient[2]) == pytest.approx(-804.5)
    expected = first.pixel_array.T.astype(np.int64) * int(first.RescaleSlope) + int(first.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[:, :, 0], expected)
    assert volume.array.min() == -1024
    # the name is stable across scans and readable
    again = scan_dicom(files(folder), root=dicom_root)
    assert again.series[0].name == series.name and series.name.startswith("CT_Body_3.0_")


def test_float_rescale_gives_float32(tmp_path: Path, dicom_root: Path) -> None:
    folder = copy_folder(dicom_root / CROP, tmp_path / "crop")
    for f in files(folder):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "1.25"
        ds.save_as(f)
    volume = read_dicom_series(folder)
    original = read_dicom_series(dicom_root / CROP)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, original.array * 0.5 + 1.25)


def test_single_file_is_a_one_slice_volume(dicom_root: Path) -> None:
    volume = read_dicom_series([dicom_root / CROP / "5.dcm"])
    assert volume.shape == (35, 51, 1)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert volume.affine[2, 3] == pytest.approx(5.0)


def test_file_order_does_not_matter(dicom_root: Path) -> None:
    paths = files(dicom_root / MR1)
    a = read_dicom_series(paths)
    b = read_dicom_series(list(reversed(paths)))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)


# ----------------------------------------------------------------------------------------------
# Grouping edge cases
# ----------------------------------------------------------------------------------------------


def test_two_echoes_sharing_a_uid_become_two_volumes(tmp_path: Path, dicom_root: Path) -> None:
    out = tmp_path / "echoes"
    out.mkdir()
    for echo in (1, 2):
        for f in files(dicom_root / CROP):
            ds = pydicom.dcmread(f)
            ds.EchoNumbers = echo
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(out / f"e{echo}_{f.name}")
    scan = scan_dicom(files(out), root=tmp_path)
    assert scan.errors == []
    assert [s.shape for s in scan.series] == [(35, 51, 32), (35, 51, 32)]
    assert scan.series[0].name != scan.series[1].name


def test_duplicate_positions_without_a_separating_field_are_refused(tmp_path: Path, dicom_root: Path) -> None:
    folder = copy_folder(dicom_root / CROP, tmp_path / "crop")
    ds = pydicom.dcmread(folder / "7.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "7b.dcm")
    scan = scan_dicom(files(folder))
    assert scan.series == []
    assert len(scan.errors) == 1
    message = str(scan.errors[0])
    assert str(folder) in message and "same slice position" in message
    assert "7.dcm" in message and "7b.dcm" in message


def test_enhanced_multiframe_file_is_one_volume(tmp_path: Path, dicom_root: Path) -> None:
    """An enhanced multi-frame file built from the HippoCrop slices, frames stored shuffled."""
    reference = read_dicom_series(dicom_root / CROP)
    slices = [pydicom.dcmread(f) for f in files(dicom_root / CROP)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(slices))
    first = slices[0]
    ds = Dataset()
    ds.file_meta = first.file_meta.copy()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4.1")
    for keyword in (
        "Modality",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesDescription = "enhanced"
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for i in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = slices[i].ImagePositionPatient
        item.PlanePositionSequence = DicomSequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(slices[i].pixel_array.tobytes() for i in order)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)

    scan = scan_dicom([tmp_path / "enhanced.dcm"])
    assert scan.errors == [] and len(scan.series) == 1
    assert scan.series[0].layout == "multiframe"
    volume = scan.series[0].read()
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine)


# ----------------------------------------------------------------------------------------------
# Skipped non-image objects
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtstruct.dcm", "RT Structure Set"),
        ("test-SR.dcm", "Structured Report"),
        ("liver_1frame.dcm", "SEG"),
        ("rtdose.dcm", "RT Dose"),
        (
            "SC_rgb_rle.dcm",
            "2-D image without patient geometry (Secondary Capture Image Storage, modality OT",
        ),
        (
            "examples_ybr_color.dcm",
            "2-D image without patient geometry (Ultrasound Multi-frame Image Storage",
        ),
    ],
)
def test_non_image_objects_are_skipped_with_a_reason(name: str, reason: str) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None
    scan = scan_dicom([path])
    assert scan.series == [] and scan.errors == []
    assert len(scan.skipped) == 1 and reason in scan.skipped[0][1]


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def test_text_file_named_dcm_is_not_dicom(tmp_path: Path) -> None:
    fake = tmp_path / "notes.dcm"
    fake.write_text("this is not an image\n" * 20)
    scan = scan_dicom([fake])
    assert len(scan.errors) == 1 and scan.series == []
    assert (
        str(scan.errors[0])
        == f"{fake}: not a DICOM file (no DICM marker at byte 128 and no DICOM tag at the start)"
    )


def test_image_without_pixel_data_is_an_error(tmp_path: Path, dicom_root: Path) -> None:
    ds = pydicom.dcmread(dicom_root / CROP / "3.dcm")
    del ds.PixelData
    target = tmp_path / "nopixels.dcm"
    ds.save_as(target)
    scan = scan_dicom([target])
    assert scan.series == [] and scan.skipped == []
    assert [str(e) for e in scan.errors] == [f"{target}: DICOM image (MR Image Storage) has no pixel data"]


def test_missing_slice_is_refused_naming_the_gap(tmp_path: Path, dicom_root: Path) -> None:
    folder = copy_folder(dicom_root / TS_CT, tmp_path / "ct")
    victim = next(
        f
        for f in files(folder)
        if float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) == -784.5
    )
    victim.unlink()
    scan = scan_dicom(files(folder))
    assert scan.series == []
    assert len(scan.errors) == 1
    error = scan.errors[0]
    assert isinstance(error, ImagingError) and error.path == str(folder)
    message = str(error)
    assert "not uniform" in message
    assert "gap of 4.000 mm" in message and "expected 2.000 mm" in message
    assert "-786.500 mm" in message and "-782.500 mm" in message
    assert "1 slice(s) missing" in message
    with pytest.raises(ImagingError, match="gap of 4.000 mm"):
        read_dicom_series(folder)


def test_uneven_spacing_is_refused(tmp_path: Path, dicom_root: Path) -> None:
    folder = copy_folder(dicom_root / CROP, tmp_path / "crop")
    ds = pydicom.dcmread(folder / "10.dcm")
    ds.ImagePositionPatient = [0, 0, 10.4]  # 1.4 mm then 0.6 mm: beyond the 10 % tolerance
    ds.save_as(folder / "10.dcm")
    scan = scan_dicom(files(folder))
    assert scan.series == [] and len(scan.errors) == 1
    assert "expected 1.000 mm" in str(scan.errors[0])


def test_small_position_jitter_is_accepted(tmp_path: Path, dicom_root: Path) -> None:
    folder = copy_folder(dicom_root / CROP, tmp_path / "crop")
    ds = pydicom.dcmread(folder / "10.dcm")
    ds.ImagePositionPatient = [0, 0, 10.05]
    ds.save_as(folder / "10.dcm")
    scan = scan_dicom(files(folder))
    assert scan.errors == [] and scan.series[0].shape[2] == 32


def test_corrupt_compressed_pixel_data_names_the_transfer_syntax(tmp_path: Path, dicom_root: Path) -> None:
    source = files(dicom_root / TS_CT)[0]
    ds = pydicom.dcmread(source)
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    target = tmp_path / "broken.dcm"
    ds.save_as(target)
    scan = scan_dicom([target])
    assert scan.errors == [] and len(scan.series) == 1  # headers are fine
    with pytest.raises(ImagingError) as info:
        scan.series[0].read()
    assert str(info.value).startswith(f"{target}: cannot decode pixel data (transfer syntax JPEG 2000")


def test_transfer_syntax_without_decoder_is_refused_at_scan(tmp_path: Path, dicom_root: Path) -> None:
    ds = pydicom.dcmread(files(dicom_root / TS_CT)[0])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2
    target = tmp_path / "mpeg.dcm"
    ds.save_as(target)
    scan = scan_dicom([target])
    assert scan.series == [] and len(scan.errors) == 1
    assert "MPEG2" in str(scan.errors[0]) and str(target) in str(scan.errors[0])


def test_read_dicom_series_refuses_several_volumes(dicom_root: Path) -> None:
    with pytest.raises(ImagingError, match="9 DICOM volumes found"):
        read_dicom_series(dicom_root / QA_TS)


def test_series_name_is_sanitized() -> None:
    series = DicomSeries(
        key="k",
        layout="slices",
        paths=(Path("a"),),
        shape=(1, 1, 1),
        affine=np.eye(4),
        metadata={"series_description": "T1 / post (gd) é"},
    )
    name = series.name
    assert name.startswith("T1_post_gd")
    assert all(ch.isalnum() or ch in "._-" for ch in name) and name.isascii()


def test_cross_sectional_image_without_geometry_is_an_error() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")  # a CT image without ImagePositionPatient
    assert path is not None
    scan = scan_dicom([path])
    assert scan.series == [] and scan.skipped == []
    assert [str(e) for e in scan.errors] == [
        f"{path}: DICOM image without 3-D geometry (missing or invalid ImageOrientationPatient, ImagePositionPatient)"
    ]
