"""A DICOMweb server (Orthanc or any other) as a source of images and a sink of SEGs.

`DicomWebSource` is the PACS side of a DICOMweb datastore:

* `list_series` — QIDO-RS series search, filterable by modality, study date (``YYYYMMDD`` or a
  ``YYYYMMDD-YYYYMMDD`` range) and series description (``*`` wildcards; a plain word matches
  anywhere in the description).
* `fetch_series` — WADO-RS retrieval on first use: **one** request for the whole series, each
  instance in its stored transfer syntax, read as a stream; each instance is parsed as it
  arrives, once, in memory (`segloop.imaging.dicom.read_dicom_parts`: the grouping, gap and
  rescale rules of a local import, and its voxels) and the pixels are decoded locally (a thread
  pool for compressed syntaxes). The instances' headers are kept as the delivered bytes cut
  before the pixel data (what a SEG export needs to reference them). `fetch` returns the volume
  with where the time went. Cached on disk as ``volume.nii.gz`` written in stored (uncompressed)
  gzip blocks — no deflate cost — plus the headers. The cache is bounded by ``cache_bytes``:
  after each fetch the least recently used series are evicted until the total fits (the series
  just fetched is kept even if it alone is larger). A server that lists a series but delivers
  fewer instances than it announced, or none, is an error naming the study and series UIDs;
  nothing is cached then.
* `import_series` — registers a fetched series as an image of a local datastore (where
  segloop's own metadata — label revisions, models — lives), with ``series_uid``,
  ``study_uid`` and ``dicomweb_url`` in its metadata and source ``dicomweb:STUDY/SERIES``.
* `store_seg` — STOW-RS of a SEG ("send to PACS").

`segloop.store.dicomweb_store.DicomWebDatastore` builds a full `Datastore` on top of this.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from segloop.imaging.dicom_read import read_dicom_parts
from segloop.imaging.errors import ImagingError
from segloop.imaging.nifti import read_nifti, write_nifti
from segloop.imaging.volume import Volume
from segloop.store.base import Datastore
from segloop.store.dicomweb_http import DEFAULT_TIMEOUT, PacsError, PacsLink, from_response
from segloop.store.errors import NotFoundError
from segloop.store.records import ImageRecord

DEFAULT_CACHE_BYTES = 2 * 1024**3


WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
"""WADO-RS of instances in their stored transfer syntax (decoded here, as a local import is)."""


@dataclass
class FetchedSeries:
    """What `DicomWebSource.fetch` got: the volume, the SOPInstanceUIDs in slice order, and
    where the time went (seconds: qido, wado = request until the last byte, split = multipart
    parsing, parse/decode/stack = `read_dicom_parts`, headers = header files written)."""

    volume: Volume
    sop_uids: list[str]
    seconds: dict[str, float]
    instances: int
    bytes: int


@dataclass(frozen=True)
class SeriesInfo:
    """One series as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    study_date: str
    instances: int | None
    patient_id: str


def _value(item: dict[str, Any], tag: str) -> str:
    entry = item.get(tag) or {}
    values = entry.get("Value") or []
    if not values:
        return ""
    v = values[0]
    if isinstance(v, dict):  # person names
        return str(v.get("Alphabetic", ""))
    return str(v)


class DicomWebSource:
    """QIDO/WADO/STOW against one DICOMweb server, with a size-bounded on-disk series cache."""

    def __init__(
        self,
        url: str,
        cache_dir: Path | str,
        *,
        auth: tuple[str, str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.link = PacsLink(url, auth=auth, timeout=timeout)
        self.session = self.link.session
        self.url = self.link.url
        self.timeout = self.link.timeout
        self.client = DICOMwebClient(self.url, session=self.session, timeout=self.link.timeouts)
        self.client.set_http_retry_params(retry=False)  # its 5 attempts with back-off took 30 s; PacsLink retries once
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = int(cache_bytes)

    # --- QIDO ----------------------------------------------------------------------------

    def list_series(
        self,
        *,
        modality: str | None = None,
        study_date: str | None = None,
        description: str | None = None,
        series_uid: str | None = None,
        limit: int | None = None,
    ) -> list[SeriesInfo]:
        """Series on the server matching all the given filters."""
        filters: dict[str, Any] = {}
        if series_uid:
            filters["SeriesInstanceUID"] = series_uid
        if modality:
            filters["Modality"] = modality
        if study_date:
            filters["StudyDate"] = study_date
        if description:
            filters["SeriesDescription"] = description if "*" in description or "?" in description else f"*{description}*"
        fields = ["StudyDate", "SeriesDescription", "NumberOfSeriesRelatedInstances", "PatientID", "Modality"]
        # Built by hand: clients percent-encode "*" and Orthanc then matches it literally.
        query = [(k, v) for k, v in filters.items()] + [("includefield", f) for f in fields]
        if limit is not None:
            query.append(("limit", str(limit)))
        qs = "&".join(f"{quote(k)}={quote(str(v), safe='*?-,.')}" for k, v in query)
        response = self.link.get("QIDO-RS series search", f"/series?{qs}",
                                 headers={"Accept": "application/dicom+json"})
        try:
            found = response.json() if response.content else []
        except ValueError as exc:
            raise PacsError(self.url, "QIDO-RS series search", f"the answer is not DICOM JSON ({exc})") from exc
        out = []
        for item in found:
            count = _value(item, "00201209")
            out.append(
                SeriesInfo(
                    study_uid=_value(item, "0020000D"),
                    series_uid=_value(item, "0020000E"),
                    modality=_value(item, "00080060"),
                    description=_value(item, "0008103E"),
                    study_date=_value(item, "00080020"),
                    instances=int(count) if count else None,
                    patient_id=_value(item, "00100020"),
                )
            )
        return sorted(out, key=lambda s: (s.study_date, s.study_uid, s.series_uid))

    # --- cache ---------------------------------------------------------------------------

    def _entry(self, series_uid: str) -> Path:
        return self.cache_dir / hashlib.sha1(series_uid.encode()).hexdigest()[:20]

    def is_cached(self, series_uid: str) -> bool:
        return (self._entry(series_uid) / "volume.nii.gz").is_file()

    def cached_headers(self, series_uid: str) -> Path:
        """Folder of the cached instances' headers (pixel data removed), for SEG export."""
        folder = self._entry(series_uid) / "headers"
        if not folder.is_dir():
            raise NotFoundError(f"series {series_uid} is not in the DICOMweb cache")
        return folder

    def drop(self, series_uid: str) -> None:
        """Remove one series from the cache (e.g. once a datastore holds it)."""
        shutil.rmtree(self._entry(series_uid), ignore_errors=True)

    def clear(self) -> None:
        """Empty the cache (fetches in flight in staging folders included)."""
        for entry in self.cache_dir.iterdir() if self.cache_dir.is_dir() else ():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def cache_size(self) -> int:
        return sum(p.stat().st_size for p in self.cache_dir.rglob("*") if p.is_file())

    def _evict(self, keep: Path) -> list[str]:
        entries = []
        for entry in self.cache_dir.iterdir():
            if not entry.is_dir() or entry == keep or entry.name.startswith("."):
                continue
            stamp = entry / "last_used"
            used = stamp.stat().st_mtime if stamp.exists() else 0.0
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            entries.append((used, size, entry))
        total = self.cache_size()
        evicted = []
        for _, size, entry in sorted(entries):
            if total <= self.cache_bytes:
                break
            info = entry / "series.json"
            name = json.loads(info.read_text())["series_uid"] if info.exists() else entry.name
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            evicted.append(name)
        return evicted

    # --- WADO ----------------------------------------------------------------------------

    def fetch_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        expected_instances: int | None = None,
        headers_to: Path | None = None,
    ) -> Volume:
        """The series as a `Volume`, from the cache or fetched with WADO-RS (then cached).

        With ``headers_to`` (an empty or missing folder on the cache's filesystem) the series is
        always fetched, its headers are written there and nothing is cached: for callers that
        keep the series themselves (`DicomWebDatastore`), which saves a second volume write.

        Raises:
            PacsError: the PACS is unreachable, silent, answers an error, or delivers fewer
                instances than QIDO announced (messages name the PACS and the UIDs).
            ImagingError: the delivered instances are not one volume.
        """
        entry = self._entry(series_uid)
        volume_path = entry / "volume.nii.gz"
        if volume_path.is_file() and headers_to is None:
            (entry / "last_used").touch()
            volume = read_nifti(volume_path)
            volume.metadata = json.loads((entry / "series.json").read_text())["metadata"]
            return volume
        if headers_to is not None:
            return self.fetch(study_uid, series_uid, headers_to, expected_instances=expected_instances).volume
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir))
        try:
            fetched = self.fetch(study_uid, series_uid, staging / "headers", expected_instances=expected_instances)
            volume = fetched.volume
            # a cache (fetched again when evicted): stored gzip blocks, no compression cost
            write_nifti(volume, staging / "volume.nii.gz", compresslevel=0, durable=False)
            meta = {"study_uid": study_uid, "series_uid": series_uid, "metadata": _jsonable(volume.metadata)}
            (staging / "series.json").write_text(json.dumps(meta))
            (staging / "last_used").touch()
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._evict(keep=entry)
        return volume

    def fetch(
        self, study_uid: str, series_uid: str, headers_to: Path, *, expected_instances: int | None = None
    ) -> FetchedSeries:
        """WADO-RS the series (one request, stored transfer syntaxes), read it into a `Volume` in
        memory (each instance parsed once: `segloop.imaging.dicom.read_dicom_parts`, the rules
        and voxels of a local import) and write the instances' headers (the instances cut before
        their pixel data, bytes as delivered) to the new folder ``headers_to``. Nothing cached.

        Raises:
            PacsError, ImagingError: as `fetch_series`.
        """
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = seconds.get(name, 0.0) + now - clock
            clock = now

        what = f"study {study_uid} series {series_uid}"
        if expected_instances is None:
            listed = self.link.call(
                f"QIDO-RS instance search of {what}",
                lambda: self.client.search_for_instances(
                    study_uid, series_uid, fields=["SOPInstanceUID"], get_remaining=True
                ),
            )
            expected_instances = len(listed)
            lap("qido")
        operation = f"WADO-RS retrieval of {what}"
        got: list[int] = []

        def counted() -> Iterator[bytes]:
            for part in self.stream_series_parts(study_uid, series_uid, seconds=seconds):
                got.append(len(part))
                yield part

        try:
            # parts are parsed as they arrive: decoding overlaps the transfer
            read = self.link.call(operation, lambda: read_dicom_parts(counted(), f"{what} at {self.url}"))
        except ImagingError as exc:
            if not got or (expected_instances and len(got) < expected_instances):
                raise self._incomplete(operation, len(got), expected_instances) from exc
            raise ImagingError(None, f"{what} at {self.url}: the delivered instances are not one volume: "
                                     f"{exc.problem}") from exc
        if expected_instances and len(got) < expected_instances:
            raise self._incomplete(operation, len(got), expected_instances)
        # the transfer's own time: what parsing (done as the parts arrived) did not take
        seconds["wado"] = seconds.get("wado", 0.0) - read.seconds.get("parse", 0.0)
        seconds.update(read.seconds)
        clock = time.perf_counter()
        parts = read.parts
        what = f"{what} at {self.url}"
        volume = read.volume
        if str(volume.metadata.get("series_uid") or "") != series_uid:
            raise ImagingError(None, f"{what}: delivered instances belong to series {volume.metadata.get('series_uid')}")
        headers = Path(headers_to)
        headers.parent.mkdir(parents=True, exist_ok=True)
        if headers.exists():
            headers.rmdir()  # must be empty
        staging = headers.with_name(f".{headers.name}-{os.getpid()}-{threading.get_ident()}")
        staging.mkdir()
        try:
            for n, part in enumerate(parts):
                raw = read.header_bytes(n, part)
                target = staging / f"{n:06d}.dcm"
                if raw is not None:
                    target.write_bytes(raw)
                else:  # deflated: re-encode the header
                    _save(_header_of(part), target)
            os.replace(staging, headers)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        lap("headers")
        volume.metadata.update({"study_uid": study_uid, "series_uid": series_uid, "dicomweb_url": self.url})
        volume.metadata.pop("source_paths", None)
        return FetchedSeries(volume, read.sop_uids_in_slice_order, seconds, len(parts),
                             sum(len(p) for p in parts))

    def import_series(self, store: Datastore, study_uid: str, series_uid: str) -> ImageRecord:
        """The local datastore's image for this series, fetching and adding it on first use."""
        for record in store.list_images():
            if record.metadata.get("series_uid") == series_uid:
                return record
        volume = self.fetch_series(study_uid, series_uid)
        name = str(volume.metadata.get("series_description") or volume.metadata.get("name") or "series")
        return store.add_image(volume, name=name, source=f"dicomweb:{study_uid}/{series_uid}")

    def _incomplete(self, operation: str, got: int, expected: int | None) -> PacsError:
        text = f"{got} of {expected}" if expected else "no"
        return PacsError(self.url, operation, f"the PACS delivered {text} instances (frames missing)",
                         code="pacs_incomplete")

    def stream_series_parts(
        self, study_uid: str, series_uid: str, *, seconds: dict[str, float] | None = None
    ) -> Iterator[bytes]:
        """`retrieve_series_parts` yielding each instance as soon as its bytes are in (one
        request; the answer is read in 1 MiB chunks). Errors of the transfer propagate as
        `requests` exceptions: call it inside ``self.link.call``. ``seconds["wado"]``: the time
        from the request to the last byte, including what the consumer did meanwhile."""
        t0 = time.perf_counter()
        operation = f"WADO-RS retrieval of study {study_uid} series {series_uid}"
        response = self.session.get(
            f"{self.url}/studies/{study_uid}/series/{series_uid}", stream=True, timeout=self.link.timeouts,
            # no HTTP compression: a PACS that gzips DICOM spends more than the transfer saves
            headers={"Accept": WADO_ACCEPT, "Accept-Encoding": "identity"})
        try:
            if response.status_code >= 400:
                raise from_response(response, self.url, operation)
            content_type = response.headers.get("Content-Type", "")
            try:
                splitter = MultipartSplitter(content_type)
            except ValueError as exc:
                raise PacsError(self.url, operation, str(exc)) from exc
            for chunk in response.iter_content(1 << 20):
                yield from splitter.feed(chunk)
            yield from splitter.close()
        finally:
            response.close()
            if seconds is not None:
                seconds["wado"] = seconds.get("wado", 0.0) + time.perf_counter() - t0

    def retrieve_series_parts(
        self, study_uid: str, series_uid: str, *, seconds: dict[str, float] | None = None
    ) -> list[bytes]:
        """WADO-RS of a whole series in one request, each instance in its **stored** transfer
        syntax (``transfer-syntax=*``: a PACS asked for Explicit VR Little Endian transcodes, and
        Orthanc cannot for JPEG 2000 — it answered 500 or dropped the instance); decoding is
        local (`segloop.imaging.dicom`), as for imported files. The parts as bytes."""
        operation = f"WADO-RS retrieval of study {study_uid} series {series_uid}"
        t0 = time.perf_counter()
        response = self.link.get(operation, f"/studies/{study_uid}/series/{series_uid}", headers={
            "Accept": WADO_ACCEPT})
        body = response.content
        t1 = time.perf_counter()
        try:
            parts = split_multipart(response.headers.get("Content-Type", ""), body)
        except ValueError as exc:
            raise PacsError(self.url, operation, str(exc)) from exc
        if seconds is not None:
            seconds["wado"] = seconds.get("wado", 0.0) + t1 - t0
            seconds["split"] = seconds.get("split", 0.0) + time.perf_counter() - t1
        return parts

    # --- STOW ----------------------------------------------------------------------------

    def store_instances(self, datasets: list[Dataset]) -> None:
        """STOW-RS ``datasets`` (not retried here: see `store_seg`).

        Raises:
            PacsError: the PACS is unreachable, silent or refused them (naming the SOP instance UIDs).
        """
        uids = ", ".join(str(ds.get("SOPInstanceUID", "?")) for ds in datasets[:5])
        operation = f"STOW-RS of {uids}"
        response = self.link.call(operation, lambda: self.client.store_instances(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(self.url, operation, f"the PACS refused {len(failed)} instance(s) "
                            f"(FailureReason {', '.join(reasons)})", code="pacs_refused")

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """Whether the PACS holds this instance (QIDO-RS). Raises `PacsError`."""
        found = self.link.call(
            f"QIDO-RS instance search of {sop_uid}",
            lambda: self.client.search_for_instances(
                study_uid, series_uid, search_filters={"SOPInstanceUID": sop_uid}, fields=["SOPInstanceUID"]
            ),
        )
        return any(_value(item, "00080018") == sop_uid for item in found or [])

    def store_seg(self, seg: Dataset | Path | str) -> str:
        """Send a SEG to the server (STOW-RS); returns its SOPInstanceUID.

        A STOW that failed without an answer (timed out, connection lost) may still have been
        stored: the PACS is then asked (QIDO-RS) whether it holds the instance before the failure
        is reported. With segloop's stable SEG UIDs (one per image and revision) a re-send
        therefore never makes a second SEG.

        Raises:
            PacsError: the SEG is not on the PACS.
        """
        ds = seg if isinstance(seg, Dataset) else pydicom.dcmread(seg)
        try:
            self.store_instances([ds])
        except PacsError as exc:
            if exc.status not in (502, 503, 504) or exc.code in ("pacs_auth", "pacs_refused"):
                raise
            try:
                stored = self.has_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                           str(ds.SOPInstanceUID))
            except PacsError:
                raise exc from None
            if not stored:
                raise
        return str(ds.SOPInstanceUID)


class MultipartSplitter:
    """Splits a ``multipart/related`` body (RFC 2046) fed in chunks into its parts, each
    returned as soon as the next delimiter is in (one copy per part). A non-multipart
    ``application/dicom`` answer is one part.

    Raises:
        ValueError: a multipart type without a boundary.
    """

    def __init__(self, content_type: str) -> None:
        self.single = content_type.lower().startswith("application/dicom")
        boundary = ""
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip().strip('"')
        if not boundary and not self.single:
            raise ValueError(f"the answer is not multipart/related with a boundary (Content-Type {content_type!r})")
        self.delimiter = b"--" + boundary.encode()
        self.buf = bytearray()
        self.pos = 0  # where the next search starts
        self.start: int | None = None  # where the current part's content starts
        self.done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        self.buf += chunk
        if self.single or self.done:
            return []
        out: list[bytes] = []
        while True:
            at = self.buf.find(self.delimiter, self.pos)
            if at < 0:
                # the delimiter may straddle chunks: search again from just before the end
                self.pos = max(self.pos, len(self.buf) - len(self.delimiter) - 4)
                break
            if self.start is not None:
                end = at - 2 if self.buf[at - 2:at] == b"\r\n" else at
                with memoryview(self.buf) as view:
                    out.append(bytes(view[self.start:end]))  # one copy
                self.start = None
            after = at + len(self.delimiter)
            if self.buf[after:after + 2] == b"--":
                self.done = True  # the close delimiter
                break
            head_end = self.buf.find(b"\r\n\r\n", after)
            if head_end < 0:
                self.pos = at  # its headers are not all in yet: look at this delimiter again
                break
            self.start = head_end + 4
            self.pos = self.start
        if self.start is None and not self.done and self.pos > (32 << 20):  # drop what is consumed
            del self.buf[:self.pos]
            self.pos = 0
        elif self.start is not None and self.start > (32 << 20):
            del self.buf[:self.start]
            self.pos -= self.start
            self.start = 0
        return out

    def close(self) -> list[bytes]:
        """What is left: the single part, or a last part whose close delimiter never came."""
        if self.single:
            return [bytes(self.buf)] if self.buf else []
        return []


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a ``multipart/related`` message (RFC 2046), or the body itself when the
    server sent one non-encapsulated ``application/dicom`` instance.

    Raises:
        ValueError: a multipart type without a boundary.
    """
    if content_type.lower().startswith("application/dicom"):
        return [body] if body else []
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise ValueError(f"the answer is not multipart/related with a boundary (Content-Type {content_type!r})")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def _header_of(part: bytes) -> Dataset:
    """One delivered instance without its pixel data (what a SEG export needs)."""
    return pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)


def _save(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=False)


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        else:
            out[k] = str(v)
    return out
