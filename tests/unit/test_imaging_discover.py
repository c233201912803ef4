"""segloop.imaging.discover and segloop.imaging.archive: files, folders and zips."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segloop.imaging import ImagingError, Volume, discover, safe_extract_zip, write_nifti
from segloop.imaging import dicom_series as dicom_module

CROP = "mr_brain_tcia_pgbm/Study1/13_HCropVolume"
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def tiny_nifti(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return write_nifti(
        Volume(rng.integers(0, 100, (4, 5, 6)).astype(np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), path
    )


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return target


def workdir_files(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*") if p.is_file()] if workdir.exists() else []


# ----------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------


def test_discover_all_shared_dicom(shared_data: Path, tmp_path: Path) -> None:
    found = discover([shared_data / "dicom"], tmp_path / "work")
    assert found.errors == []
    assert sorted(p.name for p, _ in found.skipped) == ["liver.dcm", "partial_overlaps.dcm"]
    assert len(found.sources) == 5 + 9
    assert all(s.kind == "dicom" for s in found.sources)
    names = [s.name for s in found.sources]
    assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
    assert sum(n.startswith("ax_asc_35sl_") for n in names) == 9
    crop = next(s for s in found.sources if s.name.startswith("HippoCrop_"))
    assert len(crop.paths) == 32
    volume = crop.read()
    assert volume.shape == (35, 51, 32) and volume.metadata["name"] == crop.name


def test_discovery_reads_headers_only(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pixels(path: Path) -> np.ndarray:
        raise AssertionError(f"pixels of {path} decoded during discovery")

    monkeypatch.setattr(dicom_module, "_decode", no_pixels)
    found = discover([shared_data / "dicom" / CROP], tmp_path)
    assert len(found.sources) == 1
    with pytest.raises(AssertionError, match="decoded during discovery"):
        found.sources[0].read()


def test_nifti_names_and_read(shared_data: Path, tmp_path: Path) -> None:
    images = shared_data / "Task04_Hippocampus" / "imagesTr"
    found = discover([images / "hippocampus_001.nii.gz", images / "hippocampus_003.nii.gz"], tmp_path)
    assert found.errors == [] and found.skipped == []
    assert [s.name for s in found.sources] == ["hippocampus_001", "hippocampus_003"]
    assert all(s.kind == "nifti" for s in found.sources)
    volume = found.sources[0].read()
    assert volume.orientation == ("R", "A", "S") and volume.spacing == pytest.approx((1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------


def test_mixed_folder_nifti_dicom_and_other_files(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shared_data / "dicom" / CROP, data / "series" / "crop")
    tiny_nifti(data / "scan_a.nii.gz")
    tiny_nifti(data / "nested" / "scan_b.nii", seed=1)
    (data / "README.md").write_text("notes")
    (data / ".DS_Store").write_bytes(b"\x00\x01")
    (data / "meta.json").write_text("{}")
    (data / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    found = discover([data], tmp_path / "work")
    assert found.errors == []
    assert found.skipped == [
        (data / "photo.png", "not a NIfTI, DICOM or zip file")
    ]  # README/.json/hidden: quiet
    kinds = sorted((s.kind, s.name.split("_")[0]) for s in found.sources)
    assert kinds == [("dicom", "HippoCrop"), ("nifti", "scan"), ("nifti", "scan")]
    assert {s.name for s in found.sources if s.kind == "nifti"} == {"scan_a", "scan_b"}
    for source in found.sources:
        assert source.read().array.ndim == 3


def test_text_file_named_dcm_in_a_folder_is_an_error(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shared_data / "dicom" / CROP, data)
    (data / "fake.dcm").write_text("hello\n")
    found = discover([data], tmp_path / "work")
    assert len(found.sources) == 1
    assert [str(e) for e in found.errors] == [
        f"{data / 'fake.dcm'}: not a DICOM file (no DICM marker at byte 128 and no DICOM tag at the start)"
    ]


def test_duplicate_names_get_a_suffix(tmp_path: Path) -> None:
    tiny_nifti(tmp_path / "a" / "case.nii.gz")
    tiny_nifti(tmp_path / "b" / "case.nii")
    found = discover([tmp_path / "a", tmp_path / "b"], tmp_path / "work")
    assert [s.name for s in found.sources] == ["case", "case_2"]


def test_empty_folder_missing_path_and_unknown_file_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    only_docs = tmp_path / "docs"
    only_docs.mkdir()
    (only_docs / "README.md").write_text("x")
    missing = tmp_path / "missing.nii.gz"
    text = tmp_path / "notes.txt"
    text.write_text("x")
    found = discover([empty, only_docs, missing, text], tmp_path / "work")
    assert found.sources == []
    assert [str(e) for e in found.errors] == [
        f"{empty}: empty folder (no files)",
        f"{only_docs}: empty folder (no files)",
        f"{missing}: does not exist",
        f"{text}: not a NIfTI (.nii/.nii.gz), DICOM or zip file",
    ]


def test_truncated_nifti_fails_with_its_path(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    target = tmp_path / "cut.nii.gz"
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    found = discover([target], tmp_path / "work")
    problems = [str(e) for e in found.errors]
    for s in found.sources:  # the header may still parse: then read() must refuse
        with pytest.raises(ImagingError) as info:
            s.read()
        problems.append(str(info.value))
    assert len(problems) == 1
    assert problems[0].startswith(f"{target}: not a readable NIfTI file")


# ----------------------------------------------------------------------------------------------
# Zips
# ----------------------------------------------------------------------------------------------


def test_zip_of_dicom_and_nifti(shared_data: Path, tmp_path: Path) -> None:
    content = tmp_path / "content"
    shutil.copytree(shared_data / "dicom" / CROP, content / "crop")
    tiny_nifti(content / "small.nii.gz")
    archive = zip_folder(content, tmp_path / "upload.zip")
    work = tmp_path / "work"
    found = discover([archive], work)
    assert found.errors == []
    assert sorted(s.kind for s in found.sources) == ["dicom", "nifti"]
    dicom_source = next(s for s in found.sources if s.kind == "dicom")
    assert all(p.is_relative_to(work) for p in dicom_source.paths)
    assert dicom_source.read().shape == (35, 51, 32)
    # names do not depend on where the zip was extracted
    again = discover([archive], tmp_path / "work2")
    assert sorted(s.name for s in again.sources) == sorted(s.name for s in found.sources)


def test_zip_inside_a_folder_is_opened(shared_data: Path, tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    tiny_nifti(inner / "z.nii.gz")
    folder = tmp_path / "folder"
    folder.mkdir()
    zip_folder(inner, folder / "bundle.zip")
    found = discover([folder], tmp_path / "work")
    assert [s.name for s in found.sources] == ["z"]


def _zip_with_member(target: Path, member: str | zipfile.ZipInfo, data: bytes = b"x") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("ok/fine.txt", b"fine")
        zf.writestr(member, data)
    return target


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.nii.gz", "has a '..' component (path traversal)"),
        ("a/../../evil.nii.gz", "has a '..' component (path traversal)"),
        ("/etc/evil.nii.gz", "has an absolute path"),
        ("C:/evil.nii.gz", "has a drive letter"),
        ("..\\evil.nii.gz", "has a '..' component (path traversal)"),
    ],
)
def test_unsafe_zip_members_are_refused(tmp_path: Path, member: str, problem: str) -> None:
    archive = _zip_with_member(tmp_path / "bad.zip", member)
    work = tmp_path / "work"
    found = discover([archive], work)
    assert found.sources == []
    assert [str(e) for e in found.errors] == [f"{archive}: member {member!r} {problem}; archive refused"]
    assert workdir_files(work) == [] and not (tmp_path / "evil.nii.gz").exists()
    assert list(work.iterdir()) == []


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link.nii.gz")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip_with_member(tmp_path / "link.zip", info, b"/etc/passwd")
    dest = tmp_path / "out"
    with pytest.raises(ImagingError) as excinfo:
        safe_extract_zip(archive, dest)
    assert str(excinfo.value) == f"{archive}: member 'link.nii.gz' is a symbolic link; archive refused"
    assert not dest.exists()


def test_zip_bomb_and_member_caps(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\x00" * 2_000_000)
        zf.writestr("more.bin", b"\x00" * 10)
    assert archive.stat().st_size < 50_000
    with pytest.raises(
        ImagingError, match=r"expands to 2000010 bytes, more than the limit of 1000000 \(zip bomb guard\)"
    ):
        safe_extract_zip(archive, tmp_path / "a", max_total_bytes=1_000_000)
    with pytest.raises(ImagingError, match="has 2 members, more than the limit of 1"):
        safe_extract_zip(archive, tmp_path / "b", max_members=1)
    found = discover([archive], tmp_path / "work", max_zip_bytes=1_000_000)
    assert len(found.errors) == 1 and "zip bomb guard" in str(found.errors[0])
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_lying_declared_size_is_caught_while_extracting(tmp_path: Path) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("data.bin", b"\x01" * 5000)
    extracted: list[Path] = []

    # understate the declared size so the up-front check passes; extraction must still refuse
    # (zipfile stops at the declared size and the CRC fails; our byte counter is the second guard)
    original = zipfile.ZipFile.infolist

    def understated(self: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        infos = original(self)
        for info in infos:
            info.file_size = 10
        return infos

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.ZipFile, "infolist", understated)
        with pytest.raises(
            ImagingError, match=r"member 'data.bin' (cannot be extracted|takes the archive past)"
        ):
            extracted = safe_extract_zip(archive, tmp_path / "out", max_total_bytes=4000)
    assert extracted == [] and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def test_safe_extract_returns_files(tmp_path: Path) -> None:
    archive = _zip_with_member(tmp_path / "fine.zip", "dir/sub/x.nii.gz", b"abc")
    out = safe_extract_zip(archive, tmp_path / "out")
    assert out == sorted([tmp_path / "out" / "dir/sub/x.nii.gz", tmp_path / "out" / "ok/fine.txt"])
    assert (tmp_path / "out" / "dir/sub/x.nii.gz").read_bytes() == b"abc"


def test_not_a_zip(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    found = discover([fake], tmp_path / "work")
    assert len(found.errors) == 1 and str(found.errors[0]).startswith(f"{fake}: not a readable zip file")


def test_nifti_header_check_at_discovery(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(b"\x00" * 10)
    found = discover([bad], tmp_path / "work")
    assert found.sources == [] and str(found.errors[0]).startswith(f"{bad}: not a readable NIfTI file")
    assert isinstance(nib.load(tiny_nifti(tmp_path / "ok.nii")), nib.Nifti1Image)
