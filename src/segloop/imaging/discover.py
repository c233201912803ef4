"""Finding images in what a user hands over: files, folders and zips of NIfTI and DICOM.

`discover` only reads headers (NIfTI headers, DICOM headers with ``stop_before_pixels``); pixels
are decoded by `ImageSource.read`.

Rules
-----
* An input path that does not exist, an empty folder, a folder with no image in it, and an
  input *file* that is not NIfTI, DICOM or zip are errors.
* Folders are walked recursively; a folder may mix NIfTI, DICOM and zip files. DICOM files are
  recognised by content (``DICM`` marker or a raw data set), whatever their name; a file named
  ``.dcm``/``.dicom``/``.ima`` that is not DICOM is an error. All DICOM files under one input
  are grouped together (a series may span sub-folders), see `segloop.imaging.dicom`.
* Zips (given directly or found in folders, nested up to ``max_zip_depth``) are extracted
  safely (`segloop.imaging.archive`) into a fresh folder under ``workdir`` and walked like a
  folder; the sources' paths point there, so ``workdir`` must outlive the sources.
* Quietly ignored inside folders (neither error nor skipped): hidden files and folders (name
  starting with ``.``), ``__MACOSX``, ``Thumbs.db``, ``desktop.ini`` and documentation or
  metadata files with suffix ``.md .txt .rst .json .csv .tsv .yaml .yml .html .htm``.
  Any other file that is not NIfTI, DICOM or zip is listed in ``skipped`` with the reason,
  as are non-image DICOM objects (SEG, RTSTRUCT, SR, PR, ...).
* NRRD files (``.nrrd``) are images (`segloop.imaging.nrrd`); 3D Slicer segmentations
  (``.seg.nrrd``) are label maps, listed in ``skipped``.
* Names: NIfTI -> file name without ``.nii``/``.nii.gz``; NRRD -> without ``.nrrd``; DICOM -> series description +
  ``_`` + 8 hex digits of the series key (see `DicomSeries.name`), sanitized to
  ``[A-Za-z0-9._-]``. Where two sources would get the same name, later ones (in input order,
  then path order) get ``_2``, ``_3``...
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import nrrd

from segloop.imaging.archive import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_TOTAL_BYTES,
    is_zip_path,
    safe_extract_zip,
)
from segloop.imaging.dicom_header import looks_like_dicom
from segloop.imaging.dicom_scan import scan_dicom
from segloop.imaging.dicom_series import DicomSeries, sanitize_name
from segloop.imaging.errors import ImagingError
from segloop.imaging.nifti import is_nifti_path, read_nifti_channels
from segloop.imaging.nrrd import is_seg_nrrd_path, read_nrrd
from segloop.imaging.volume import Volume

QUIET_SUFFIXES = frozenset({".md", ".txt", ".rst", ".json", ".csv", ".tsv", ".yaml", ".yml", ".html", ".htm"})
QUIET_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})


@dataclass
class ImageSource:
    """One image found by `discover`; `read` decodes it.

    Attributes:
        name: stable display name (``[A-Za-z0-9._-]``).
        kind: ``"nifti"``, ``"nrrd"`` or ``"dicom"``.
        paths: the file(s) holding it (DICOM: in slice order; NIfTI: one, or one per channel).
        series: the DICOM series (``None`` for NIfTI).
    """

    name: str
    kind: Literal["nifti", "dicom", "nrrd"]
    paths: tuple[Path, ...]
    series: DicomSeries | None = field(default=None, repr=False)

    def read(self) -> Volume:
        """The image as a `Volume` (array ``(X, Y, Z[, C])``, voxel -> RAS+ affine).

        Raises:
            ImagingError: the file(s) cannot be decoded (e.g. a truncated NIfTI).
        """
        if self.kind == "nifti":  # several paths: one file per channel (nnU-Net's raw layout)
            volume = read_nifti_channels(self.paths)
        elif self.kind == "nrrd":
            volume = read_nrrd(self.paths[0])
        else:
            assert self.series is not None
            volume = self.series.read()
        volume.metadata["name"] = self.name
        return volume


@dataclass
class Discovery:
    """What `discover` found: sources, errors (one per bad file/series) and skipped files."""

    sources: list[ImageSource] = field(default_factory=list)
    errors: list[ImagingError] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _quiet(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.lower() in QUIET_NAMES or path.suffix.lower() in QUIET_SUFFIXES


def _is_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(".nrrd")


def _nifti_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitize_name(name, max_length=128) if name else "nifti"


@dataclass
class _Walker:
    workdir: Path
    max_zip_bytes: int
    max_zip_members: int
    max_zip_depth: int
    result: Discovery = field(default_factory=Discovery)

    def add_input(self, path: Path) -> None:
        before = (len(self.result.sources), len(self.result.errors))
        if not path.exists() and not path.is_symlink():
            self.result.errors.append(ImagingError(path, "does not exist"))
            return
        if path.is_dir():
            files = self._walk(path)
            if not files:
                self.result.errors.append(ImagingError(path, "empty folder (no files)"))
                return
            self._add_files(files, root=path, depth=0)
        elif path.is_file():
            if not (
                is_nifti_path(path)
                or _is_nrrd(path)
                or is_zip_path(path)
                or looks_like_dicom(path)
                or path.suffix.lower() in DICOM_SUFFIXES
            ):
                self.result.errors.append(ImagingError(path, "not a NIfTI (.nii/.nii.gz), DICOM or zip file"))
                return
            self._add_files([path], root=path.parent, depth=0)
        else:
            self.result.errors.append(ImagingError(path, "not a regular file or folder"))
            return
        if (len(self.result.sources), len(self.result.errors)) == before:
            self.result.errors.append(ImagingError(path, "no NIfTI or DICOM image found"))

    def _walk(self, folder: Path) -> list[Path]:
        """Files under ``folder`` (recursive, sorted), without quietly ignored ones."""
        out: list[Path] = []
        for entry in sorted(folder.iterdir()):
            if _quiet(entry):
                continue
            if entry.is_symlink():
                self.result.skipped.append((entry, "symbolic link — not followed"))
            elif entry.is_dir():
                out.extend(self._walk(entry))
            elif entry.is_file():
                out.append(entry)
        return out

    def _add_files(self, files: list[Path], root: Path, depth: int) -> None:
        dicom: list[Path] = []
        for f in files:
            if is_nifti_path(f):
                self._add_nifti(f)
            elif is_seg_nrrd_path(f):
                self.result.skipped.append(
                    (
                        f,
                        "3D Slicer segmentation (.seg.nrrd) — a label map, not an image; import it as a label",
                    )
                )
            elif _is_nrrd(f):
                self._add_nrrd(f)
            elif is_zip_path(f):
                self._add_zip(f, depth)
            elif f.suffix.lower() in DICOM_SUFFIXES or looks_like_dicom(f):
                dicom.append(f)
            else:
                self.result.skipped.append((f, "not a NIfTI, DICOM or zip file"))
        if dicom:
            scan = scan_dicom(dicom, root=root)
            self.result.errors.extend(scan.errors)
            self.result.skipped.extend(scan.skipped)
            for s in scan.series:
                self.result.sources.append(ImageSource(s.name, "dicom", s.paths, s))

    def _add_nifti(self, path: Path) -> None:
        try:
            img = nib.load(str(path))  # header only; data is decoded in read()
        except Exception as exc:
            self.result.errors.append(
                ImagingError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})")
            )
            return
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            self.result.errors.append(
                ImagingError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
            )
            return
        self.result.sources.append(ImageSource(_nifti_name(path), "nifti", (path,)))

    def _add_nrrd(self, path: Path) -> None:
        try:
            nrrd.read_header(str(path))  # header only; data is decoded in read()
        except Exception as exc:
            self.result.errors.append(
                ImagingError(path, f"not a readable NRRD file ({type(exc).__name__}: {exc})")
            )
            return
        stem = path.name[: -len(".nrrd")]
        self.result.sources.append(
            ImageSource(sanitize_name(stem, max_length=128) if stem else "nrrd", "nrrd", (path,))
        )

    def _add_zip(self, path: Path, depth: int) -> None:
        if depth >= self.max_zip_depth:
            self.result.errors.append(
                ImagingError(path, f"zip nested more than {self.max_zip_depth} levels deep; not opened")
            )
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        stem = sanitize_name(path.name[: -len(".zip")] or "archive")
        dest = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=self.workdir))
        try:
            safe_extract_zip(path, dest, max_total_bytes=self.max_zip_bytes, max_members=self.max_zip_members)
        except ImagingError as exc:
            if dest.exists() and not any(dest.iterdir()):
                dest.rmdir()
            self.result.errors.append(exc)
            return
        files = self._walk(dest)
        if not files:
            self.result.errors.append(ImagingError(path, "zip archive holds no files"))
            return
        self._add_files(files, root=dest, depth=depth + 1)


def discover(
    paths: Sequence[Path],
    workdir: Path,
    *,
    max_zip_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_zip_members: int = DEFAULT_MAX_MEMBERS,
    max_zip_depth: int = 3,
) -> Discovery:
    """Expand files, folders and zips into image sources (headers only; see the module rules).

    Args:
        paths: NIfTI files, DICOM files, folders, zips.
        workdir: where zips are extracted (one new sub-folder per zip).
        max_zip_bytes: cap on each zip's uncompressed size.
        max_zip_members: cap on each zip's member count.
        max_zip_depth: how deep zips inside zips are opened.

    Returns:
        `Discovery` with ``sources`` (unique names), ``errors`` and ``skipped``.
    """
    walker = _Walker(Path(workdir), max_zip_bytes, max_zip_members, max_zip_depth)
    for p in paths:
        walker.add_input(Path(p))
    used: set[str] = set()
    for source in walker.result.sources:
        base, n = source.name, 1
        while source.name in used:
            n += 1
            source.name = f"{base}_{n}"
        used.add(source.name)
    return walker.result
