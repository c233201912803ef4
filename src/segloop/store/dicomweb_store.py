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
  the PACS leave the local disk when they are released (`release`) and at `close`, except those
  whose latest label revision was not sent to the PACS (`mark_sent`): they are kept until it is,
  or until a release asked with ``discard_unsent=True``. The rules, and the files that record
  fetches and sent revisions across a crash: `segloop.store.dicomweb_ephemeral`.

`delete_image` on a fetched series deletes the local copy and its revisions; the series stays
on the PACS (and in the listing).

The datastore is put together from parts, one concept each::

    dicomweb_records    a series' stable image id; its record before and after the fetch
    dicomweb_fetch      first use (WADO-RS, view file, background registration), the cache policy
    dicomweb_ephemeral  ephemeral mode: its two JSON ledgers, release, purge, SQLite scrubbing
    dicomweb            the DICOMweb client: QIDO-RS, WADO-RS, STOW-RS (with dicomweb_http and
                        dicomweb_preview, a series' middle slice alone)

This module lists the series (QIDO-RS answers cached ``listing_ttl`` seconds per filter), composes
the parts into `DicomWebDatastore` and leaves everything else to the local store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from segloop.imaging.volume import Volume, middle_slice
from segloop.store.dicomweb import DEFAULT_CACHE_BYTES, DicomWebSource, SeriesInfo
from segloop.store.dicomweb_ephemeral import EPHEMERAL_FILE, SENT_FILE, EphemeralMode, Release, compact_sqlite
from segloop.store.dicomweb_fetch import FetchedSeries, PendingSeries
from segloop.store.dicomweb_http import DEFAULT_TIMEOUT, PacsError
from segloop.store.dicomweb_preview import fetch_preview
from segloop.store.dicomweb_records import (
    ID_PREFIX,
    NON_IMAGE_MODALITIES,
    flag_unreachable,
    series_image_id,
    shown_record,
    virtual_record,
)
from segloop.store.errors import NotFoundError, ValidationError
from segloop.store.filters import SeriesFilter
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

__all__ = [
    "EPHEMERAL_FILE",
    "ID_PREFIX",
    "NON_IMAGE_MODALITIES",
    "SENT_FILE",
    "DicomWebDatastore",
    "Release",
    "parse_filters",
    "series_image_id",
]

log = logging.getLogger(__name__)


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
        self.listing_ttl = listing_ttl
        self._listings: dict[SeriesFilter, tuple[float, list[SeriesInfo]]] = {}
        # set by each listing: None, or what failed when the PACS could not be asked (the list
        # then holds the local images only, each with metadata["pacs_unreachable"])
        self.listing_problem: dict[str, Any] | None = None
        self._lock = threading.RLock()  # the listings
        self._fetched = FetchedSeries(local, source, cache_bytes)
        self._ephemeral = EphemeralMode(self._fetched, enabled=ephemeral)
        if ephemeral:
            self.local.secure_delete()  # a released image's rows are zeroed, not just unlinked
        if ephemeral and self._ephemeral.ledger.ids():
            self.purge_ephemeral()  # leftovers of a run that did not stop cleanly
            self.local.close()
            compact_sqlite(self.local.url)

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

    @property
    def cache_bytes(self) -> int:
        return self._fetched.cache_bytes

    @property
    def ephemeral(self) -> bool:
        return self._ephemeral.enabled

    @property
    def last_fetch(self) -> dict[str, Any]:
        """The last fetch's figures (seconds per step, bytes)."""
        return self._fetched.last_fetch

    def close(self) -> None:
        self._fetched.close()
        if self.ephemeral:
            self.purge_ephemeral()
        self.local.close()
        if self.ephemeral:
            compact_sqlite(self.local.url)

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
                return shown_record(record)
        for uid in sorted(series_uids):
            for s in self.source.list_series(series_uid=uid):
                if s.series_uid == uid and s.modality.upper() not in NON_IMAGE_MODALITIES:
                    with self._lock:
                        self._listings.clear()  # the next listing shows it too
                    return self._virtual(s)
        return None

    def _virtual(self, s: SeriesInfo) -> ImageRecord:
        return virtual_record(s, self.source.url)

    # --- images -----------------------------------------------------------------------------

    def _all_images(self, filter: SeriesFilter | None = None) -> list[ImageRecord]:
        """PACS series (start-up filters and ``filter`` through QIDO-RS, the descriptions checked
        here too), then local images the listing does not show — uploads, and fetched series the
        PACS no longer lists — filtered by ``filter`` on their stored metadata."""
        local = {r.id: r for r in self.local.list_images()}
        for pending in self._fetched.pending_records():
            local.setdefault(pending.id, pending)
        out: list[ImageRecord] = []
        listed: set[str] = set()
        checks = [f for f in (self.filter, filter) if f and f.description]
        try:
            series = self.series(filter=filter)
        except PacsError as exc:
            # the worklist outlives the PACS: what is held here still opens, with its labels
            self.listing_problem = {"url": exc.url, "code": exc.code, "error": str(exc), "status": exc.status}
            log.warning("listing without the PACS: %s", exc)
            return [flag_unreachable(shown_record(r)) for r in local.values() if not filter or filter.matches(r)]
        self.listing_problem = None
        for s in series:
            image_id = series_image_id(s.series_uid)
            listed.add(image_id)
            record = self._virtual(s)  # what the PACS says now decides whether it matches
            if all(f.matches(record) for f in checks):
                out.append(shown_record(local[image_id]) if image_id in local else record)
        # uploads, and fetched series the PACS no longer lists (they still hold labels)
        out.extend(shown_record(r) for r in local.values() if r.id not in listed and (not filter or filter.matches(r)))
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
            return shown_record(self.local.get_image(image_id))
        except NotFoundError:
            if not isinstance(image_id, str) or not image_id.startswith(ID_PREFIX):
                raise
        pending = self._fetched.pending(image_id)
        if pending is not None:
            return shown_record(pending.record)
        return self._virtual(self.series_of(image_id))

    def is_fetched(self, image_id: str) -> bool:
        """Fetched from the PACS: held locally, or just fetched (its local copy being written)."""
        return self._fetched.is_fetched(image_id)

    def _in_local(self, image_id: str) -> bool:
        return self._fetched.in_local(image_id)

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
            self._fetched.touch(image_id)
            return record
        view = self._view(image_id)
        if isinstance(view, PendingSeries):
            return view.wait()
        return view

    def _view(self, image_id: str) -> ImageRecord | PendingSeries:
        """What a first view needs, as soon as it exists: the local record, or a series just
        fetched whose registration in the local store (a gzip NIfTI written at level 1: seconds
        for a large CT) runs in the background while the view is served from a file written
        without compression (`PendingSeries`)."""
        with contextlib.suppress(NotFoundError):
            record = self.local.get_image(image_id)
            self._fetched.touch(image_id)
            return record
        pending = self._fetched.pending(image_id)
        if pending is not None:
            self._fetched.touch(image_id)
            return pending
        info = self.series_of(image_id)
        view = self._fetched.fetch(image_id, info, before=self._ephemeral.remember)
        if isinstance(view, PendingSeries):  # not a local record fetched by another thread meanwhile
            self._fetched.touch(image_id)
        return view

    def settle(self, image_id: str | None = None) -> None:
        """Wait for background registrations (of ``image_id``, or all); failures were logged."""
        self._fetched.settle(image_id)

    def load_image(self, image_id: str) -> Volume:
        view = self._view(image_id)
        if isinstance(view, PendingSeries):
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
                self._fetched.touch(image_id)
                return got
        return middle_slice(self.load_image(image_id))

    def image_path(self, image_id: str) -> Path:
        """The image's NIfTI file; for a series just fetched, a file written without gzip
        compression (valid ``.nii.gz``) while its local copy is being written."""
        view = self._view(image_id)
        if isinstance(view, PendingSeries):
            return view.view_path
        return self.local.image_path(image_id)

    def add_image(self, volume: Volume, name: str, source: str, modality: str | None = None) -> ImageRecord:
        return self.local.add_image(volume, name, source, modality)

    def delete_image(self, image_id: str) -> None:
        self.settle(image_id)
        self._fetched.drop_old_views(image_id=image_id)
        with self._ephemeral.lock:
            self.local.delete_image(image_id)
            self._ephemeral.forget(image_id)  # revision numbers start again at 1: forget what was sent
            self._ephemeral.released.pop(image_id, None)

    def attachments_dir(self, image_id: str, kind: str) -> Path:
        if image_id.startswith(ID_PREFIX):
            self.ensure_local(image_id)
        return self.local.attachments_dir(image_id, kind)

    def attach(self, image_id: str, kind: str, folder: Path) -> Path:
        return self.local.attach(image_id, kind, folder)

    def touch(self, image_id: str) -> None:
        """The image is in use (viewed): `idle_ephemeral` leaves it alone for a while."""
        if image_id.startswith(ID_PREFIX):
            self._fetched.touch(image_id)

    # --- ephemeral mode (segloop.store.dicomweb_ephemeral) ------------------------------------

    def is_ephemeral_image(self, image_id: str) -> bool:
        """Fetched from the PACS in ephemeral mode (and not released yet)."""
        return self._ephemeral.is_ephemeral_image(image_id)

    def mark_sent(self, image_id: str, revision: int) -> None:
        """Record that ``revision`` of the image is on the PACS (as a SEG): its release then loses nothing."""
        self._ephemeral.mark_sent(image_id, revision)

    def sent_revisions(self, image_id: str) -> list[int]:
        return self._ephemeral.sent_revisions(image_id)

    def unsent_revisions(self, image_id: str) -> list[int]:
        """The revisions a release would lose (those after the last one sent to the PACS)."""
        return self._ephemeral.unsent_revisions(image_id)

    def release(self, image_id: str, *, discard_unsent: bool = False) -> Release:
        """Ephemeral mode: delete a fetched image from local disk now, unless label revisions not
        sent to the PACS would be lost (`EphemeralMode.release`)."""
        return self._ephemeral.release(image_id, discard_unsent=discard_unsent)

    def held(self) -> dict[str, list[int]]:
        """Ephemeral images kept on disk because a label revision of theirs was not sent: id -> revisions."""
        return self._ephemeral.held()

    def idle_ephemeral(self, idle_seconds: float, busy: Iterable[str] = ()) -> list[str]:
        """Ephemeral images not in ``busy`` (open sessions) and unused for ``idle_seconds``."""
        return self._ephemeral.idle(idle_seconds, busy)

    def purge_ephemeral(self, *, discard_unsent: bool = False) -> list[str]:
        """Delete every image fetched in ephemeral mode but those holding a label revision not
        sent to the PACS (`EphemeralMode.purge`), and the whole WADO cache."""
        return self._ephemeral.purge(discard_unsent=discard_unsent)

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
        with self._ephemeral.lock:  # not between a release's "unsent?" check and its deletion
            if not self._in_local(image_id):  # released meanwhile: fetch it again
                self.ensure_local(image_id)
            released_at = self._ephemeral.released.get(image_id)
            if base_revision is not None and base_revision == released_at and self.local.get_image(image_id).latest_revision is None:
                # edited from a revision that was sent to the PACS and then released here
                base_revision = None
            rev = self.local.save_label(
                image_id, label, author=author, source=source, status=status, base_revision=base_revision
            )
            self._ephemeral.released.pop(image_id, None)
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
        with self._ephemeral.lock:
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
