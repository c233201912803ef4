"""Safe extraction of zip archives (uploads of DICOM folders or NIfTI files).

Every member is checked **before** anything is written: names with a ``..`` component, absolute
paths, drive letters (``C:``), UNC paths, NUL characters, symbolic links and encrypted members
are refused, and so are archives with more than ``max_members`` members or whose declared
uncompressed size exceeds ``max_total_bytes``. While extracting, the bytes actually written are
counted too (declared sizes can lie), so a zip bomb stops at the cap. Extraction goes to a
temporary folder beside ``dest`` that is renamed into place at the end; on any refusal or error
it is removed, so nothing is left behind.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from segloop.imaging.errors import ImagingError

DEFAULT_MAX_TOTAL_BYTES = 8 * 1024**3
"""Default cap on the total uncompressed size of an archive (8 GiB)."""
DEFAULT_MAX_MEMBERS = 100_000
"""Default cap on the number of members in an archive."""

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def is_zip_path(path: str | Path) -> bool:
    """True for a ``.zip`` file name (case-insensitive)."""
    return str(path).lower().endswith(".zip")


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name:
        return "has a NUL character in its name"
    unified = name.replace("\\", "/")
    if unified.startswith("/"):
        return "has an absolute path"
    if _DRIVE.match(unified):
        return "has a drive letter"
    if ".." in PurePosixPath(unified).parts:
        return "has a '..' component (path traversal)"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def safe_extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Extract ``zip_path`` into the new folder ``dest`` after checking every member.

    Args:
        zip_path: the archive.
        dest: folder to create (must not exist, or be empty).
        max_total_bytes: refuse archives whose uncompressed size is larger.
        max_members: refuse archives with more members.

    Returns:
        The extracted files (not folders), sorted.

    Raises:
        ImagingError: naming the zip (and the member) when the archive is unreadable or
            unsafe; ``dest`` then does not exist (or is left as empty as it was).
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ImagingError(dest, "extraction folder already exists and is not empty")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ImagingError(zip_path, f"not a readable zip file ({type(exc).__name__}: {exc})") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise ImagingError(
                zip_path, f"archive has {len(infos)} members, more than the limit of {max_members}"
            )
        declared = 0
        for info in infos:
            problem = _member_problem(info)
            if problem:
                raise ImagingError(zip_path, f"member {info.filename!r} {problem}; archive refused")
            declared += info.file_size
        if declared > max_total_bytes:
            raise ImagingError(
                zip_path,
                f"archive expands to {declared} bytes, more than the limit of {max_total_bytes} (zip bomb guard)",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            written = _extract_all(archive, infos, zip_path, tmp, max_total_bytes)
            if dest.exists():
                dest.rmdir()
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return sorted(dest / rel for rel in written)


def _extract_all(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], zip_path: Path, root: Path, max_total_bytes: int
) -> list[Path]:
    total = 0
    files: list[Path] = []
    root_resolved = root.resolve()
    for info in infos:
        rel = Path(*[p for p in PurePosixPath(info.filename.replace("\\", "/")).parts if p not in ("", ".")])
        if not rel.parts:
            continue
        target = root / rel
        if not target.resolve().is_relative_to(root_resolved):  # defence in depth
            raise ImagingError(
                zip_path, f"member {info.filename!r} escapes the extraction folder; archive refused"
            )
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > max_total_bytes:
                        raise ImagingError(
                            zip_path,
                            f"member {info.filename!r} takes the archive past {max_total_bytes} uncompressed "
                            "bytes (zip bomb guard); archive refused",
                        )
                    out.write(chunk)
        except ImagingError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ImagingError(
                zip_path, f"member {info.filename!r} cannot be extracted ({type(exc).__name__}: {exc})"
            ) from exc
        files.append(rel)
    return files
