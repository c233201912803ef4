"""The series the DICOMweb datastore fetched from the PACS into its local store (`FetchedSeries`).

* **First use** (`FetchedSeries.fetch`) retrieves the series with WADO-RS
  (`DicomWebSource.fetch`: one streamed request, each instance parsed once; missing instances
  and undeliverable series are errors naming the UIDs, nothing stored) and answers with a
  `PendingSeries`: the voxels in memory and a NIfTI written without compression (stored gzip
  blocks: a valid ``.nii.gz``), the *view file*, in a staging folder with the instances' headers.
  Meanwhile one background thread at lower CPU priority registers the series in the local store
  under its stable id (gzip level 1, the headers as ``dicom-headers`` attachments, for SEG export
  and "send to PACS"). Anything that needs the local copy waits for it (`PendingSeries.wait`,
  `FetchedSeries.settle`). A view file is deleted a minute after its registration ended (a
  request may have been handed its path a moment before), or at once when its image goes.
* **Cache policy** (`FetchedSeries.evict`, after each registration): image files of the local
  store that came from DICOMweb are bounded by ``cache_bytes``. Beyond it, the least recently
  used (`FetchedSeries.touch`) fetched images that have **no label revision** are deleted locally;
  they are fetched again on next use under the same id. Images with a label revision are pinned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.nifti import write_nifti
from segloop.imaging.volume import Volume
from segloop.store.dicomweb import DicomWebSource, SeriesInfo
from segloop.store.dicomweb_records import ID_PREFIX, virtual_record
from segloop.store.errors import NotFoundError, ValidationError
from segloop.store.ingest import HEADERS_KIND
from segloop.store.local import LocalDatastore
from segloop.store.records import ImageRecord

log = logging.getLogger(__name__)


@dataclass
class PendingSeries:
    """A series fetched a moment ago: its record and voxels, the view file (gzip level 0), the
    staging folder (headers, view file) and its background registration."""

    record: ImageRecord
    volume: Volume
    view_path: Path
    staged: Path
    future: Future[ImageRecord] | None

    def wait(self) -> ImageRecord:
        """The local record, once the background registration ended (its error, if it failed)."""
        assert self.future is not None
        return self.future.result()


class FetchedSeries:
    """The series fetched from ``source`` into ``local``: their first use, their background
    registrations and view files, when each was last used and the eviction beyond ``cache_bytes``
    (see module doc)."""

    def __init__(self, local: LocalDatastore, source: DicomWebSource, cache_bytes: int) -> None:
        self.local = local
        self.source = source
        self.cache_bytes = int(cache_bytes)
        self._lock = threading.RLock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        # fetched series whose registration in the local store runs in the background
        self._pending: dict[str, PendingSeries] = {}
        self._registrar: ThreadPoolExecutor | None = None
        self._old_views: list[tuple[float, str, Path]] = []  # view files kept a moment after registration
        self.last_fetch: dict[str, Any] = {}  # the last fetch's figures (seconds per step, bytes)
        self.used: dict[str, float] = {}  # image id -> when it was last used (time.time())

    def pending(self, image_id: str) -> PendingSeries | None:
        """The series fetched a moment ago whose local copy is being written, if ``image_id`` is one."""
        return self._pending.get(image_id)

    def pending_records(self) -> list[ImageRecord]:
        return [p.record for p in list(self._pending.values())]

    def in_local(self, image_id: str) -> bool:
        try:
            self.local.get_image(image_id)
            return True
        except NotFoundError:
            return False

    def is_fetched(self, image_id: str) -> bool:
        """Fetched from the PACS: held locally, or just fetched (its local copy being written)."""
        return image_id in self._pending or self.in_local(image_id)

    def touch(self, image_id: str) -> None:
        self.used[image_id] = time.time()

    def fetch(
        self, image_id: str, info: SeriesInfo, before: Callable[[str], None] | None = None
    ) -> ImageRecord | PendingSeries:
        """The series ``info`` as image ``image_id``, once: its local record if another thread
        fetched it meanwhile, else its `PendingSeries` — the one being registered, or fetched now
        (``before(image_id)`` called first)."""
        with self._lock:
            lock = self._fetch_locks.setdefault(image_id, threading.Lock())
        with lock:
            with contextlib.suppress(NotFoundError):  # fetched by another thread meanwhile
                return self.local.get_image(image_id)
            pending = self._pending.get(image_id)
            if pending is None:
                if before is not None:
                    before(image_id)
                pending = self._fetch(image_id, info)
        return pending

    def _fetch(self, image_id: str, info: SeriesInfo) -> PendingSeries:
        """WADO-RS the series, write its view file, start its registration in the background."""
        self.drop_old_views()
        staged = Path(tempfile.mkdtemp(prefix=".tmp-fetch-", dir=self.local.staging_dir()))
        try:
            fetched = self.source.fetch(info.study_uid, info.series_uid, staged / "headers",
                                        expected_instances=info.instances)
            t0 = time.perf_counter()
            volume = fetched.volume
            meta = dict(volume.metadata)
            meta["sop_instance_uids"] = fetched.sop_uids
            meta["display_name"] = virtual_record(info, self.source.url).name
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
        pending = PendingSeries(record, volume, view, staged, None)
        self.last_fetch = {"seconds": dict(fetched.seconds), "instances": fetched.instances, "bytes": fetched.bytes}
        with self._lock:
            self._pending[image_id] = pending
            if self._registrar is None:
                self._registrar = ThreadPoolExecutor(1, thread_name_prefix="dicomweb-register")
            pending.future = self._registrar.submit(self._register, pending, info.modality or None)
        return pending

    def _register(self, pending: PendingSeries, modality: str | None) -> ImageRecord:
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
        self.touch(image_id)
        self.evict(keep=image_id)
        return record

    def settle(self, image_id: str | None = None) -> None:
        """Wait for background registrations (of ``image_id``, or all); failures were logged."""
        with self._lock:
            pending = [p for i, p in self._pending.items() if image_id is None or i == image_id]
        for p in pending:
            with contextlib.suppress(Exception):
                p.wait()

    def drop_old_views(self, everything: bool = False, image_id: str | None = None) -> None:
        """Delete view files of series registered more than a minute ago (a request that got
        the view file's path a moment before the registration ended may still open it); with
        ``image_id``, that image's now (it is being released or deleted)."""
        now = time.monotonic()
        with self._lock:
            old = [item for item in self._old_views if everything or item[1] == image_id or now - item[0] > 60]
            self._old_views = [item for item in self._old_views if item not in old]
        for _, _, path in old:
            shutil.rmtree(path, ignore_errors=True)

    def evict(self, keep: str) -> list[str]:
        """Delete least recently used fetched, unlabelled images beyond ``cache_bytes``."""
        fetched = [r for r in self.local.list_images() if r.id.startswith(ID_PREFIX)]
        sizes = {r.id: _size(self.local.image_path(r.id)) for r in fetched}
        total = sum(sizes.values())
        evicted: list[str] = []
        candidates = sorted(
            (r for r in fetched if r.latest_revision is None and r.id != keep),
            key=lambda r: self.used.get(r.id, r.created_at.timestamp()),
        )
        for r in candidates:
            if total <= self.cache_bytes:
                break
            self.local.delete_image(r.id)
            total -= sizes[r.id]
            evicted.append(r.id)
        return evicted

    def close(self) -> None:
        """Wait for the registrations, stop their thread and delete every view file."""
        self.settle()
        if self._registrar is not None:
            self._registrar.shutdown(wait=True)
            self._registrar = None
        self.drop_old_views(everything=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _jsonable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(meta, default=str))
