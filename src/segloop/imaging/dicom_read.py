"""Reading exactly one DICOM volume: from files (`read_dicom_series`) or from in-memory
instances such as the parts of a WADO-RS answer, parsed as they arrive (`read_dicom_parts`,
the PACS path)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from segloop.imaging.dicom_header import DicomHeader, _str, header_from_bytes
from segloop.imaging.dicom_scan import DicomScan, _scan_headers, scan_dicom
from segloop.imaging.dicom_series import DicomSeries
from segloop.imaging.errors import ImagingError
from segloop.imaging.volume import Volume


def read_dicom_series(paths: str | Path | Iterable[str | Path]) -> Volume:
    """Read exactly one DICOM volume from a folder, a file, or a list of files.

    Raises:
        ImagingError: the first problem found, or when the files hold no volume or several.
    """
    if isinstance(paths, (str, Path)):
        base = Path(paths)
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        where: Path = base
    else:
        files = [Path(p) for p in paths]
        where = files[0].parent if files else Path(".")
    if not files:
        raise ImagingError(where, "no files")
    return _single_series(scan_dicom(files), where).read()


def _single_series(scan: DicomScan, path: Path | None, prefix: str = "") -> DicomSeries:
    """The one series of ``scan``.

    Raises:
        ImagingError: the scan's first error; or, naming ``path`` with ``prefix`` before the
            problem, when the scan found no image series or several.
    """
    if scan.errors:
        raise scan.errors[0]
    if not scan.series:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in scan.skipped[:3])
        raise ImagingError(path, f"{prefix}no DICOM image series found ({reasons or 'nothing readable'})")
    if len(scan.series) > 1:
        names = ", ".join(s.name for s in scan.series)
        raise ImagingError(path, f"{prefix}{len(scan.series)} DICOM volumes found ({names}); expected one")
    return scan.series[0]


@dataclass
class PartsRead:
    """What `read_dicom_parts` read: the volume, and each part's data set (aligned with the
    parts; pixel data included) and SOPInstanceUID in slice order."""

    volume: Volume
    datasets: list[Dataset]
    sop_uids_in_slice_order: list[str]
    header_ends: list[int | None]
    """Per part: the offset of its pixel data (see `DicomHeader.pixel_offset`); ``None``
    where not known (deflated) or for an unreadable part."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: ``parse`` (the instances' data sets), ``scan`` (grouping, geometry),
    ``decode`` (pixels, stacked and rescaled into the volume)."""
    parts: list[bytes] = field(default_factory=list, repr=False)
    """The instances as given."""

    def header_bytes(self, n: int, part: bytes) -> bytes | None:
        """Part ``n`` (``part``) without its pixel data, a DICOM file of its header; ``None``
        where unknown: write ``datasets[n]`` without its pixel data then."""
        end = self.header_ends[n]
        return None if end is None else part[:end]


def read_dicom_parts(parts: Iterable[bytes], where: str = "DICOM instances") -> PartsRead:
    """Read exactly one DICOM volume from in-memory instances (e.g. the parts of a WADO-RS
    answer), each parsed once, with the same grouping, geometry, gap and rescale rules as
    `read_dicom_series` on the same files — so the voxels are identical to a local import.

    ``parts`` may be a generator (e.g. over a WADO-RS answer still arriving): each part is parsed
    as it comes, so parsing overlaps the transfer. Non-image parts (SEG, SR, ...) are ignored as
    `scan_dicom` skips them.

    Raises:
        ImagingError: an unreadable part, no volume or several, or pixel data that fails to
            decode (as `read_dicom_series`; ``where`` names the source in messages).
    """
    parse = 0.0
    headers: list[DicomHeader | ImagingError] = []
    datasets: list[Dataset] = []
    kept: list[bytes] = []
    ends: list[int | None] = []
    by_path: dict[Path, Dataset] = {}
    for n, part in enumerate(parts):
        t = time.perf_counter()
        path = Path(f"part-{n + 1:06d}.dcm")
        kept.append(part)
        try:
            header = header_from_bytes(path, part)
        except ImagingError as exc:
            headers.append(exc)
            continue
        finally:
            parse += time.perf_counter() - t
        headers.append(header)
        datasets.append(header.dataset)
        ends.append(header.pixel_offset)
        by_path[path] = header.dataset
    if not headers:
        raise ImagingError(None, f"{where}: no instances")
    t1 = time.perf_counter()
    series = _single_series(_scan_headers(headers, None), None, f"{where}: ")
    series.datasets = by_path
    t2 = time.perf_counter()
    volume = series.read()
    order = [_str(by_path[path], "SOPInstanceUID") for path in dict.fromkeys(sl.path for sl in series.slices)]
    seconds = {"parse": parse, "scan": t2 - t1, "decode": time.perf_counter() - t2}
    return PartsRead(volume, datasets, order, ends, seconds, kept)
