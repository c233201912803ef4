"""A `Datastore` whose images come from a DICOMweb server (Orthanc or any other).

`DicomWebDatastore(local, source)` combines a PACS with a `LocalDatastore`:

* **Images** are the series that QIDO-RS lists (optionally filtered by modality, study date,
  description; non-image series such as SEG, RTSTRUCT, SR, PR are left out), plus images
  uploaded locally. A series' image id is stable: ``dw-`` + 16 hex of the SHA-1 of its
  SeriesInstanceUID. A series that was never opened is listed from the QIDO answer alone
  (``metadata["fetched"] = False``, shape ``(0, 0, instances)``, identity affine); its label
  state is "none".
* **First use** (`load_image`, `image_path`, saving a label, ...) fetches the series with
  WADO-RS (`DicomWebSource.fetch`: one streamed request, each instance parsed once; missing
  instances and undeliverable series are errors naming the UIDs, nothing stored). The first
  view is answered from a NIfTI written without compression (stored gzip blocks: a valid
  ``.nii.gz``) and the voxels in memory, while the series is registered in the local store
  under its stable id (gzip level 1, the instances' headers as ``dicom-headers`` attachments,
  for SEG export and "send to PACS") by a background thread at lower CPU priority. Anything
  that needs the local copy (a label save, attachments, release) waits for it; `settle` waits
  for all. From then on the image is read locally and listed with its label state.
* **Cache policy**: fetched series are a cache bounded by ``cache_bytes`` (image files of the
  local store that came from DICOMweb). Beyond it, the least recently used fetched images that
  have **no label revision** are deleted locally (they are fetched again on next use under the
  same id). Images with a label revision are pinned: their revisions, training sets and SEG
  exports need their grid and headers.
* **Label revisions, the label schema, models and jobs** live in the local store only (the
  PACS receives labels as DICOM SEG through "send to PACS").
* **Ephemeral mode** (``ephemeral=True``, ``segloop serve --ephemeral``): images fetched from
  the PACS are deleted from local disk — voxels, headers, the WADO cache entry and their label
  revisions — by `release` (the server calls it when an image's last interactive session ends,
  when a fetched image is left unused, and on ``POST /images/{id}/release``) and by `close`
  (server stop). **A label revision that was not sent to the PACS is never deleted silently**:
  an image whose latest revision was not sent (`mark_sent`, by "send to PACS") is *kept* —
  `release` answers ``unsent`` and `close` leaves it on disk, logged — until its label is sent
  or the release is asked with ``discard_unsent=True``. Fetched ids are recorded in
  ``dicomweb-ephemeral.json`` before the fetch, so a crash is cleaned up at the next start (by
  the same rule); sent revisions are recorded in ``dicomweb-sent.json`` until the image is
  released.

`delete_image` on a fetched series deletes the local copy and its revisions; the series stays
on the PACS (and in the listing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.nifti import write_nifti
from segloop.imaging.volume import Volume, middle_slice
from segloop.store.dicomweb import DEFAULT_CACHE_BYTES, DicomWebSource, SeriesInfo
from segloop.store.dicomweb_http import DEFAULT_TIMEOUT, PacsError
from segloop.store.dicomweb_preview import fetch_preview
from segloop.store.errors import NotFoundError, ValidationError
from segloop.store.filters import SeriesFilter
from segloop.store.ingest import HEADERS_KIND
from segloop.store.local import LocalDatastore
from segloop.store.records import (
    ImageRecord,
    LabelRevision,
    LabelSchema,
    LabelState,
    LabelStatus,
    ModelRecord,
    ModelVersion,
)

log = logging.getLogger(__name__)

ID_PREFIX = "dw-"
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"})
EPHEMERAL_FILE = "dicomweb-ephemeral.json"
SENT_FILE = "dicomweb-sent.json"
_IDENTITY = tuple(tuple(float(v) for v in row) for row in np.eye(4))


@dataclass(frozen=True)
class Release:
    """What `DicomWebDatastore.release` did: ``reason`` is released, discarded_unsent, unsent
    (kept: ``unsent_revisions`` were not sent to the PACS), not_fetched, not_from_pacs (a local
    upload) or not_ephemeral."""

    image_id: str
    released: bool
    reason: str
    unsent_revisions: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "released": self.released, "reason": self.reason,
                "unsent_revisions": list(self.unsent_revisions)}


def series_image_id(series_uid: str) -> str:
    """The stable image id of a DICOMweb series."""
    return ID_PREFIX + hashlib.sha1(series_uid.encode()).hexdigest()[:16]


def parse_filters(items: Iterable[str]) -> dict[str, str]:
    """``["modality=CT", "study_date=20200101-20201231", "description=liver"]`` -> filters.

    Raises:
        ValidationError: unknown key or missing ``=``.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or key not in ("modality", "study_date", "description") or not value.strip():
            raise ValidationError(
                f"DICOMweb filter {item!r} must be modality=..., study_date=YYYYMMDD[-YYYYMMDD] or description=..."
            )
        out[key] = value.strip()
    return SeriesFilter.from_dict(out).to_dict()  # validated (dates, modality codes), normalised


class DicomWebDatastore:
    """Images from a DICOMweb server, everything else in a local datastore (see module doc)."""

    def __init__(
        self,
        local: LocalDatastore,
        source: DicomWebSource,
        *,
        filters: dict[str, str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        ephemeral: bool = False,
        listing_ttl: float = 5.0,
    ) -> None:
        self.local = local
        self.source = source
        self.filter = SeriesFilter.from_dict(filters)
        self.filters = self.filter.to_dict()
        self.cache_bytes = int(cache_bytes)
        self.ephemeral = ephemeral
        self.listing_ttl = listing_ttl
        self._listings: dict[SeriesFilter, tuple[float, list[SeriesInfo]]] = {}
        # set by each listing: None, or what failed when the PACS could not be asked (the list
        # then holds the local images only, each with metadata["pacs_unreachable"])
        self.listing_problem: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._used: dict[str, float] = {}
        # fetched series whose registration in the local store runs in the background
        self._pending: dict[str, _Pending] = {}
        self._registrar: ThreadPoolExecutor | None = None
        self._old_views: list[tuple[float, str, Path]] = []  # view files kept a moment after registration
        self.last_fetch: dict[str, Any] = {}  # the last fetch's figures (seconds per step, bytes)
        # Ephemeral release vs. label saves: the "unsent?" check and the deletion are one step.
        self._release_lock = threading.RLock()
        self._released: dict[str, int | None] = {}  # image id -> its latest revision when released
        if ephemeral:
            self.local.secure_delete()  # a released image's rows are zeroed, not just unlinked
        if ephemeral and self._ephemeral_ids():
            self.purge_ephemeral()  # leftovers of a run that did not stop cleanly
            self.local.close()
            self._compact()

    @classmethod
    def open(
        cls,
        data: Path | str,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        filters: dict[str, str] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        ephemeral: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DicomWebDatastore:
        local = LocalDatastore(data)
        source = DicomWebSource(url, local.root / "dicomweb-cache", auth=auth, cache_bytes=cache_bytes,
                                timeout=timeout)
        return cls(local, source, filters=filters, cache_bytes=cache_bytes, ephemeral=ephemeral)

    def __repr__(self) -> str:
        return f"DicomWebDatastore({self.source.url!r}, local={self.local!r})"

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def url(self) -> str:
        return self.source.url

    def close(self) -> None:
        self.settle()
        if self._registrar is not None:
            self._registrar.shutdown(wait=True)
            self._registrar = None
        self._drop_old_views(everything=True)
        if self.ephemeral:
            self.purge_ephemeral()
        self.local.close()
        if self.ephemeral:
            self._compact()

    def _checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database and truncate it, so the old page
        images of deleted rows do not stay in the WAL file (best effort while readers are busy)."""
        if not self.local.url.startswith("sqlite:///"):
            return
        db = Path(self.local.url.removeprefix("sqlite:///"))
        try:
            con = sqlite3.connect(db, timeout=10, isolation_level=None)
            try:
                busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                con.close()
        except sqlite3.Error as exc:
            log.warning("ephemeral: could not checkpoint %s (%s)", db, exc)
            return
        if busy and busy[0]:
            log.warning("ephemeral: %s is busy; its write-ahead log is truncated at the next release or at stop", db)

    def _compact(self) -> None:
        """Rewrite the SQLite file so deleted rows (patient metadata) do not linger in free
        pages or the write-ahead log."""
        if not self.local.url.startswith("sqlite:///"):
            return
        db = Path(self.local.url.removeprefix("sqlite:///"))
        if not db.is_file():
            return
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("VACUUM")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("ephemeral: could not compact %s (%s)", db, exc)
        finally:
            con.close()

    # --- the PACS listing ------------------------------------------------------------------

    def series(self, *, refresh: bool = False, filter: SeriesFilter | None = None) -> list[SeriesInfo]:
        """The image series QIDO-RS lists under the store's start-up filters, narrowed by
        ``filter`` (a request's; it cannot widen them). Cached ``listing_ttl`` s per filter."""
        wanted = self.filter.narrow(filter) if filter else self.filter
        if wanted.empty:
            return []
        with self._lock:
            now = time.monotonic()
            cached = self._listings.get(wanted)
            if refresh or cached is None or now - cached[0] > self.listing_ttl:
                found = self.source.list_series(
                    modality=wanted.modality, study_date=wanted.study_date, description=wanted.description
                )
                images = [s for s in found if s.modality.upper() not in NON_IMAGE_MODALITIES]
                if len(self._listings) > 32:  # many different request filters: keep the cache small
                    self._listings.clear()
                cached = self._listings[wanted] = (now, images)
            return list(cached[1])

    def series_of(self, image_id: str) -> SeriesInfo:
        """The listed series behind ``image_id``. Raises `NotFoundError`."""
        if image_id.startswith(ID_PREFIX):
            for refresh in (False, True):
                for s in self.series(refresh=refresh):
                    if series_image_id(s.series_uid) == image_id:
                        return s
        raise NotFoundError(f"image {image_id!r} is not a series on {self.source.url}")

    def image_for_series(self, series_uids: set[str]) -> ImageRecord | None:
        """The image of one of these series: a local one, else one the PACS has now (asked
        directly, not from the cached listing, so a series stored a moment ago is found)."""
        for record in self.local.list_images():
            if str(record.metadata.get("series_uid") or "") in series_uids:
                return self._shown(record)
        for uid in sorted(series_uids):
            for s in self.source.list_series(series_uid=uid):
                if s.series_uid == uid and s.modality.upper() not in NON_IMAGE_MODALITIES:
                    with self._lock:
                        self._listings.clear()  # the next listing shows it too
                    return self._virtual(s)
        return None

    def _virtual(self, s: SeriesInfo) -> ImageRecord:
        date = s.study_date
        try:
            created = datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC) if date else datetime.now(UTC)
        except ValueError:
            created = datetime.now(UTC)
        return ImageRecord(
            id=series_image_id(s.series_uid),
            name=s.description or f"{s.modality or 'series'} {s.series_uid[-12:]}",
            source=f"dicomweb:{s.study_uid}/{s.series_uid}",
            modality=s.modality or "unknown",
            shape=(0, 0, int(s.instances or 0)),
            spacing=(0.0, 0.0, 0.0),
            affine=_IDENTITY,
            channels=1,
            metadata={
                "fetched": False,
                "study_uid": s.study_uid,
                "series_uid": s.series_uid,
                "study_date": s.study_date,
                "series_description": s.description,
                "instances": s.instances,
                "dicomweb_url": self.source.url,
            },
            created_at=created,
        )

    def _shown(self, record: ImageRecord) -> ImageRecord:
        """A local record of a fetched series, named as the PACS describes it."""
        if not record.id.startswith(ID_PREFIX):
            return record
        meta = dict(record.metadata)
        meta["fetched"] = True
        name = str(meta.get("display_name") or meta.get("series_description") or record.name)
        return replace(record, name=name, metadata=meta)

    # --- images -----------------------------------------------------------------------------

    def _all_images(self, filter: SeriesFilter | None = None) -> list[ImageRecord]:
        """PACS series (start-up filters and ``filter`` through QIDO-RS, the descriptions checked
        here too), then local images the listing does not show — uploads, and fetched series the
        PACS no longer lists — filtered by ``filter`` on their stored metadata."""
        local = {r.id: r for r in self.local.list_images()}
        for image_id, pending in list(self._pending.items()):
            local.setdefault(image_id, pending.record)
        out: list[ImageRecord] = []
        listed: set[str] = set()
        checks = [f for f in (self.filter, filter) if f and f.description]
        try:
            series = self.series(filter=filter)
        except PacsError as exc:
            # the worklist outlives the PACS: what is held here still opens, with its labels
            self.listing_problem = {"url": exc.url, "code": exc.code, "error": str(exc), "status": exc.status}
            log.warning("listing without the PACS: %s", exc)
            return [_flag_unreachable(self._shown(r)) for r in local.values() if not filter or filter.matches(r)]
        self.listing_problem = None
        for s in series:
            image_id = series_image_id(s.series_uid)
            listed.add(image_id)
            record = self._virtual(s)  # what the PACS says now decides whether it matches
            if all(f.matches(record) for f in checks):
                out.append(self._shown(local[image_id]) if image_id in local else record)
        # uploads, and fetched series the PACS no longer lists (they still hold labels)
        out.extend(self._shown(r) for r in local.values() if r.id not in listed and (not filter or filter.matches(r)))
        return out

    def list_images(
        self,
        label_state: LabelState | None = None,
        offset: int = 0,
        limit: int | None = None,
        filters: SeriesFilter | None = None,
    ) -> list[ImageRecord]:
        if offset < 0 or (limit is not None and limit < 0):
            raise ValidationError(f"offset and limit must not be negative (offset={offset}, limit={limit})")
        images = self._all_images(filters)
        if label_state is not None:
            if label_state not in ("none", "draft", "final"):
                raise ValidationError(f"label_state must be one of ['none', 'draft', 'final'], got {label_state!r}")
            images = [r for r in images if r.label_state == label_state]
        images = images[offset:]
        return images if limit is None else images[:limit]

    def count_images(self, label_state: LabelState | None = None, filters: SeriesFilter | None = None) -> int:
        return len(self.list_images(label_state, filters=filters))

    def get_image(self, image_id: str) -> ImageRecord:
        try:
            return self._shown(self.local.get_image(image_id))
        except NotFoundError:
            if not isinstance(image_id, str) or not image_id.startswith(ID_PREFIX):
                raise
        pending = self._pending.get(image_id)
        if pending is not None:
            return self._shown(pending.record)
        return self._virtual(self.series_of(image_id))

    def is_fetched(self, image_id: str) -> bool:
        """Fetched from the PACS: held locally, or just fetched (its local copy being written)."""
        return image_id in self._pending or self._in_local(image_id)

    def _in_local(self, image_id: str) -> bool:
        try:
            self.local.get_image(image_id)
            return True
        except NotFoundError:
            return False

    def ensure_local(self, image_id: str) -> ImageRecord:
        """The image in the local store, fetching its series with WADO-RS on first use (and
        waiting for a registration that runs in the background, see `_view`).

        Raises:
            NotFoundError: no such image or listed series.
            PacsError, ImagingError: the PACS cannot deliver the series (naming the UIDs);
                nothing stored.
        """
        with contextlib.suppress(NotFoundError):
            record = self.local.get_image(image_id)
            self._touch(image_id)
            return record
        view = self._view(image_id)
        if isinstance(view, _Pending):
            return self._wait(view)
        return view

    def _view(self, image_id: str) -> ImageRecord | _Pending:
        """What a first view needs, as soon as it exists: the local record, or a series just
        fetched whose registration in the local store (a gzip NIfTI written at level 1: seconds
        for a large CT) runs in the background while the view is served from a file written
        without compression (`_Pending`)."""
        with contextlib.suppress(NotFoundError):
            record = self.local.get_image(image_id)
            self._touch(image_id)
            return record
        pending = self._pending.get(image_id)
        if pending is not None:
            self._touch(image_id)
            return pending
        info = self.series_of(image_id)
        with self._lock:
            lock = self._fetch_locks.setdefault(image_id, threading.Lock())
        with lock:
            with contextlib.suppress(NotFoundError):  # fetched by another thread meanwhile
                return self.local.get_image(image_id)
            pending = self._pending.get(image_id)
            if pending is None:
                if self.ephemeral:
                    self._remember_ephemeral(image_id)
                pending = self._fetch(image_id, info)
        self._touch(image_id)
        return pending

    def _fetch(self, image_id: str, info: SeriesInfo) -> _Pending:
        """WADO-RS the series, write its view file, start its registration in the background."""
        self._drop_old_views()
        staged = Path(tempfile.mkdtemp(prefix=".tmp-fetch-", dir=self.local.staging_dir()))
        try:
            fetched = self.source.fetch(info.study_uid, info.series_uid, staged / "headers",
                                        expected_instances=info.instances)
            t0 = time.perf_counter()
            volume = fetched.volume
            meta = dict(volume.metadata)
            meta["sop_instance_uids"] = fetched.sop_uids
            meta["display_name"] = self._virtual(info).name
            volume = Volume(volume.array, volume.affine, meta)
            view = staged / f"{image_id}.nii.gz"
            write_nifti(volume, view, compresslevel=0, durable=False)
            fetched.seconds["view_file"] = time.perf_counter() - t0
            source = f"dicomweb:{info.study_uid}/{info.series_uid}"
            modality = info.modality or str(meta.get("modality") or "") or "unknown"
            record = ImageRecord(
                id=image_id, name=image_id, source=source, modality=modality,
                shape=volume.shape, spacing=volume.spacing,
                affine=tuple(tuple(float(v) for v in row) for row in np.asarray(volume.affine)),
                channels=volume.channels, metadata=_jsonable_meta(meta), created_at=datetime.now(UTC),
            )
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        pending = _Pending(record, volume, view, staged, None)
        self.last_fetch = {"seconds": dict(fetched.seconds), "instances": fetched.instances, "bytes": fetched.bytes}
        with self._lock:
            self._pending[image_id] = pending
            if self._registrar is None:
                self._registrar = ThreadPoolExecutor(1, thread_name_prefix="dicomweb-register")
            pending.future = self._registrar.submit(self._register, pending, info.modality or None)
        return pending

    def _register(self, pending: _Pending, modality: str | None) -> ImageRecord:
        """Add a fetched series to the local store (volume + header attachments), in the background."""
        with contextlib.suppress(Exception):  # below the request threads: they serve the views meanwhile
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        image_id = pending.record.id
        t0 = time.perf_counter()
        try:
            record = self.local.add_image(pending.volume, name=image_id, source=pending.record.source,
                                          modality=modality)
            if record.id != image_id:
                self.local.delete_image(record.id)
                raise ValidationError(f"local image id {image_id!r} is taken by another image")
            try:
                self.local.attach(record.id, HEADERS_KIND, pending.staged / "headers")
            except BaseException:
                self.local.delete_image(record.id)
                raise
        except BaseException as exc:
            log.error("could not keep the fetched series %s locally: %s", image_id, exc)
            with self._lock:
                self._pending.pop(image_id, None)
            shutil.rmtree(pending.staged, ignore_errors=True)
            raise
        with self._lock:
            self._pending.pop(image_id, None)
            self._old_views.append((time.monotonic(), image_id, pending.staged))
            self.last_fetch.setdefault("seconds", {})["register_background"] = time.perf_counter() - t0
        self._touch(image_id)
        self._evict(keep=image_id)
        return record

    def _wait(self, pending: _Pending) -> ImageRecord:
        assert pending.future is not None
        return pending.future.result()

    def settle(self, image_id: str | None = None) -> None:
        """Wait for background registrations (of ``image_id``, or all); failures were logged."""
        with self._lock:
            pending = [p for i, p in self._pending.items() if image_id is None or i == image_id]
        for p in pending:
            with contextlib.suppress(Exception):
                self._wait(p)

    def _drop_old_views(self, everything: bool = False, image_id: str | None = None) -> None:
        """Delete view files of series registered more than a minute ago (a request that got
        the view file's path a moment before the registration ended may still open it); with
        ``image_id``, that image's now (it is being released or deleted)."""
        now = time.monotonic()
        with self._lock:
            old = [item for item in self._old_views if everything or item[1] == image_id or now - item[0] > 60]
            self._old_views = [item for item in self._old_views if item not in old]
        for _, _, path in old:
            shutil.rmtree(path, ignore_errors=True)

    def _touch(self, image_id: str) -> None:
        self._used[image_id] = time.time()

    def _evict(self, keep: str) -> list[str]:
        """Delete least recently used fetched, unlabelled images beyond ``cache_bytes``."""
        fetched = [r for r in self.local.list_images() if r.id.startswith(ID_PREFIX)]
        sizes = {r.id: _size(self.local.image_path(r.id)) for r in fetched}
        total = sum(sizes.values())
        evicted: list[str] = []
        candidates = sorted(
            (r for r in fetched if r.latest_revision is None and r.id != keep),
            key=lambda r: self._used.get(r.id, r.created_at.timestamp()),
        )
        for r in candidates:
            if total <= self.cache_bytes:
                break
            self.local.delete_image(r.id)
            total -= sizes[r.id]
            evicted.append(r.id)
        return evicted

    def load_image(self, image_id: str) -> Volume:
        view = self._view(image_id)
        if isinstance(view, _Pending):
            # just fetched: the voxels in memory (the local copy is being written meanwhile)
            record = view.record
            meta = {**record.metadata, "image_id": record.id, "name": record.name, "modality": record.modality}
            return Volume(view.volume.array, np.array(record.affine, dtype=np.float64), meta)
        return self.local.load_image(image_id)

    def preview(self, image_id: str) -> Volume:
        """The image's middle slice as a one-slice `Volume` (its place in the world kept): for a
        series not fetched yet, fetched alone with two small requests (`fetch_preview`) while
        the whole series may be on its way; otherwise (or for a single multi-frame instance)
        cut from the image.

        Raises:
            NotFoundError: no such image or listed series.
            PacsError, ImagingError: the PACS cannot deliver the slice (naming the UIDs).
        """
        if not self.is_fetched(image_id):
            info = self.series_of(image_id)
            got = fetch_preview(self.source, info.study_uid, info.series_uid, info.instances)
            if got is not None:
                self._touch(image_id)
                return got
        return middle_slice(self.load_image(image_id))

    def image_path(self, image_id: str) -> Path:
        """The image's NIfTI file; for a series just fetched, a file written without gzip
        compression (valid ``.nii.gz``) while its local copy is being written."""
        view = self._view(image_id)
        if isinstance(view, _Pending):
            return view.view_path
        return self.local.image_path(image_id)

    def add_image(self, volume: Volume, name: str, source: str, modality: str | None = None) -> ImageRecord:
        return self.local.add_image(volume, name, source, modality)

    def delete_image(self, image_id: str) -> None:
        self.settle(image_id)
        self._drop_old_views(image_id=image_id)
        with self._release_lock:
            self.local.delete_image(image_id)
            self._forget_ephemeral(image_id)  # revision numbers start again at 1: forget what was sent
            self._released.pop(image_id, None)

    def is_ephemeral_image(self, image_id: str) -> bool:
        """Fetched from the PACS in ephemeral mode (and not released yet)."""
        return self.ephemeral and image_id in self._ephemeral_ids()

    def attachments_dir(self, image_id: str, kind: str) -> Path:
        if image_id.startswith(ID_PREFIX):
            self.ensure_local(image_id)
        return self.local.attachments_dir(image_id, kind)

    def attach(self, image_id: str, kind: str, folder: Path) -> Path:
        return self.local.attach(image_id, kind, folder)

    # --- ephemeral mode -----------------------------------------------------------------------

    def _ephemeral_path(self) -> Path:
        return self.local.root / EPHEMERAL_FILE

    def _ephemeral_ids(self) -> list[str]:
        try:
            return list(json.loads(self._ephemeral_path().read_text()))
        except (OSError, ValueError):
            return []

    def _remember_ephemeral(self, image_id: str) -> None:
        with self._lock:
            ids = self._ephemeral_ids()
            if image_id not in ids:
                ids.append(image_id)
                tmp = self._ephemeral_path().with_suffix(".tmp")
                tmp.write_text(json.dumps(ids))
                os.replace(tmp, self._ephemeral_path())

    def _sent(self) -> dict[str, list[int]]:
        try:
            data = json.loads((self.local.root / SENT_FILE).read_text())
            return {str(k): [int(r) for r in v] for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write_sent(self, sent: dict[str, list[int]]) -> None:
        path = self.local.root / SENT_FILE
        if not sent:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sent))
        os.replace(tmp, path)

    def mark_sent(self, image_id: str, revision: int) -> None:
        """Record that ``revision`` of the image is on the PACS (as a SEG): its release then loses nothing."""
        with self._release_lock:
            sent = self._sent()
            sent[image_id] = sorted(set(sent.get(image_id, [])) | {int(revision)})
            self._write_sent(sent)

    def sent_revisions(self, image_id: str) -> list[int]:
        return self._sent().get(image_id, [])

    def unsent_revisions(self, image_id: str) -> list[int]:
        """The revisions a release would lose: those after the last one sent to the PACS; none when
        the latest revision was sent (it carries the earlier ones) or there is no revision."""
        if not self._in_local(image_id):  # not fetched, or just fetched: no revision yet
            return []
        revisions = [r.revision for r in self.local.list_revisions(image_id)]
        if not revisions:
            return []
        sent = set(self.sent_revisions(image_id))
        if max(revisions) in sent:
            return []
        last_sent = max(sent, default=0)
        return sorted(r for r in revisions if r > last_sent)

    def touch(self, image_id: str) -> None:
        """The image is in use (viewed): `idle_ephemeral` leaves it alone for a while."""
        if image_id.startswith(ID_PREFIX):
            self._touch(image_id)

    def release(self, image_id: str, *, discard_unsent: bool = False) -> Release:
        """Ephemeral mode: delete a fetched image (voxels, headers, WADO cache entry, label
        revisions) from local disk now — unless a revision would be lost that was not sent to the
        PACS: then nothing is deleted and the answer says ``unsent`` (``discard_unsent=True``
        deletes them anyway)."""
        if not self.ephemeral:
            return Release(image_id, False, "not_ephemeral")
        if not image_id.startswith(ID_PREFIX):
            return Release(image_id, False, "not_from_pacs")  # an upload is the user's, not a cached copy
        self.settle(image_id)
        with self._release_lock:
            try:
                record = self.local.get_image(image_id)
            except NotFoundError:
                self._forget_ephemeral(image_id)
                return Release(image_id, False, "not_fetched")
            unsent = self.unsent_revisions(image_id)
            if unsent and not discard_unsent:
                return Release(image_id, False, "unsent", tuple(unsent))
            self.local.delete_image(image_id)
            self._drop_old_views(image_id=image_id)
            self._released[image_id] = record.latest_revision
            self._forget_ephemeral(image_id)
            self._used.pop(image_id, None)
            series_uid = str(record.metadata.get("series_uid") or "")
            if series_uid:
                self.source.drop(series_uid)
        self._checkpoint()
        log.info("ephemeral: released %s from local disk%s", image_id,
                 f" (discarded unsent revision(s) {unsent})" if unsent else "")
        return Release(image_id, True, "discarded_unsent" if unsent else "released", tuple(unsent))

    def _forget_ephemeral(self, image_id: str) -> None:
        with self._lock:
            ids = self._ephemeral_ids()
            if image_id in ids:
                ids.remove(image_id)
                tmp = self._ephemeral_path().with_suffix(".tmp")
                tmp.write_text(json.dumps(ids))
                os.replace(tmp, self._ephemeral_path())
        with self._release_lock:
            sent = self._sent()
            if sent.pop(image_id, None) is not None:
                self._write_sent(sent)

    def held(self) -> dict[str, list[int]]:
        """Ephemeral images kept on disk because a label revision of theirs was not sent: id -> revisions."""
        if not self.ephemeral:
            return {}
        out = {}
        for image_id in self._ephemeral_ids():
            unsent = self.unsent_revisions(image_id)
            if unsent:
                out[image_id] = unsent
        return out

    def idle_ephemeral(self, idle_seconds: float, busy: Iterable[str] = ()) -> list[str]:
        """Ephemeral images fetched here, not in ``busy`` (open sessions) and unused for
        ``idle_seconds`` (the clock starts at the fetch, or now for a leftover of an earlier run)."""
        if not self.ephemeral:
            return []
        now, skip = time.time(), set(busy)
        out = []
        for image_id in self._ephemeral_ids():
            used = self._used.setdefault(image_id, now)
            if image_id not in skip and now - used > idle_seconds and self.is_fetched(image_id):
                out.append(image_id)
        return out

    def purge_ephemeral(self, *, discard_unsent: bool = False) -> list[str]:
        """Delete every image fetched in ephemeral mode — except those holding a label revision
        that was not sent to the PACS (kept and logged; ``discard_unsent=True`` deletes them
        too) — and the whole WADO cache."""
        removed, kept = [], {}
        with self._release_lock:  # lock order everywhere: _release_lock, then _lock
            for image_id in self._ephemeral_ids():
                result = self.release(image_id, discard_unsent=discard_unsent)
                if result.released:
                    removed.append(image_id)
                elif result.reason == "unsent":
                    kept[image_id] = list(result.unsent_revisions)
            self.source.clear()
        if removed:
            log.info("ephemeral: deleted %d fetched image(s) from local disk", len(removed))
        if kept:
            log.warning(
                "ephemeral: kept %d fetched image(s) on local disk because label revisions were not sent to "
                "the PACS (%s); send them (POST /images/ID/labels/N/send) or discard them "
                "(POST /images/ID/release?discard_unsent=true)",
                len(kept), "; ".join(f"{i}: revision(s) {', '.join(map(str, r))}" for i, r in kept.items()),
            )
        return removed

    # --- everything else: the local store ------------------------------------------------------

    def get_schema(self) -> LabelSchema:
        return self.local.get_schema()

    def set_schema(self, schema: LabelSchema) -> None:
        self.local.set_schema(schema)

    def save_label(
        self,
        image_id: str,
        label: Volume | np.ndarray,
        *,
        author: str,
        source: str = "manual",
        status: LabelStatus = "draft",
        base_revision: int | None = None,
    ) -> LabelRevision:
        self.ensure_local(image_id)
        with self._release_lock:
            if not self._in_local(image_id):  # released meanwhile: fetch it again
                self.ensure_local(image_id)
            released_at = self._released.get(image_id)
            if base_revision is not None and base_revision == released_at and self.local.get_image(image_id).latest_revision is None:
                # edited from a revision that was sent to the PACS and then released here
                base_revision = None
            rev = self.local.save_label(
                image_id, label, author=author, source=source, status=status, base_revision=base_revision
            )
            self._released.pop(image_id, None)
            return rev

    def list_revisions(self, image_id: str) -> list[LabelRevision]:
        if not self._in_local(image_id):  # a label save waits for the local copy: none yet
            self.get_image(image_id)  # NotFoundError when it is not listed either
            return []
        return self.local.list_revisions(image_id)

    def get_revision(self, image_id: str, revision: int | None = None) -> LabelRevision:
        if not self._in_local(image_id):
            self.get_image(image_id)
            raise NotFoundError(f"image {image_id!r} has no label revision")
        return self.local.get_revision(image_id, revision)

    def load_label(self, image_id: str, revision: int | None = None) -> Volume:
        if not self._in_local(image_id):
            self.get_revision(image_id, revision)
        return self.local.load_label(image_id, revision)

    def mark_final(self, image_id: str, revision: int, *, author: str) -> LabelRevision:
        with self._release_lock:
            return self.local.mark_final(image_id, revision, author=author)

    def final_labels(self) -> list[LabelRevision]:
        return self.local.final_labels()

    def create_model(self, name: str, config: dict[str, Any]) -> ModelRecord:
        return self.local.create_model(name, config)

    def get_model(self, name: str) -> ModelRecord:
        return self.local.get_model(name)

    def list_models(self) -> list[ModelRecord]:
        return self.local.list_models()

    def staging_dir(self) -> Path:
        return self.local.staging_dir()

    def add_model_version(
        self,
        name: str,
        checkpoint: Path,
        *,
        config: dict[str, Any],
        trained_on: Iterable[tuple[str, int]],
        metrics: dict[str, Any],
        make_current: bool = True,
    ) -> ModelVersion:
        return self.local.add_model_version(
            name, checkpoint, config=config, trained_on=trained_on, metrics=metrics, make_current=make_current
        )

    def set_current_version(self, name: str, version: int) -> ModelRecord:
        return self.local.set_current_version(name, version)


def _flag_unreachable(record: ImageRecord) -> ImageRecord:
    return replace(record, metadata={**record.metadata, "pacs_unreachable": True})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class _Pending:
    """A series fetched a moment ago: its record and voxels, the view file (gzip level 0), the
    staging folder (headers, view file) and its background registration."""

    record: ImageRecord
    volume: Volume
    view_path: Path
    staged: Path
    future: Future[ImageRecord] | None


def _jsonable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(meta, default=str))
