"""Ephemeral mode of the DICOMweb datastore (``ephemeral=True``, ``segloop serve --ephemeral``).

Images fetched from the PACS are deleted from local disk — voxels, headers, the WADO cache entry
and their label revisions — by `EphemeralMode.release` (`DicomWebDatastore.release`: the server
calls it when an image's last interactive session ends, when a fetched image is left unused, and
on ``POST /images/{id}/release``) and by `EphemeralMode.purge` (at `DicomWebDatastore.close`,
server stop). **A label revision that was not sent to the PACS is never deleted silently**: an
image whose latest revision was not sent (`mark_sent`, by "send to PACS") is *kept* — `release`
answers ``unsent`` and the purge leaves it on disk, logged — until its label is sent or the
release is asked with ``discard_unsent=True``.

`EphemeralLedger` keeps two JSON files in the data folder (each rewritten whole, atomically):

* ``dicomweb-ephemeral.json``: the images fetched in ephemeral mode, recorded before the fetch,
  so a crash is cleaned up at the next start (by the same rule);
* ``dicomweb-sent.json``: the label revisions sent to the PACS, per image, until the image is
  released (or deleted: its revision numbers then start again at 1).

Deleted rows do not linger in the SQLite file of the local store: the store deletes securely
(`LocalDatastore.secure_delete`, turned on by the datastore), each release truncates the write-ahead
log (`checkpoint_sqlite`) and the datastore rewrites the file at stop, and at a start that
cleaned up (`compact_sqlite`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segloop.store.dicomweb_fetch import FetchedSeries
from segloop.store.dicomweb_records import ID_PREFIX
from segloop.store.errors import NotFoundError

log = logging.getLogger(__name__)

EPHEMERAL_FILE = "dicomweb-ephemeral.json"
SENT_FILE = "dicomweb-sent.json"


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


class EphemeralLedger:
    """The two JSON files of ephemeral mode in the data folder ``root`` (see module doc): which
    images were fetched, which of their label revisions were sent. A missing or unreadable file
    reads as empty."""

    def __init__(self, root: Path) -> None:
        self.ephemeral_path = root / EPHEMERAL_FILE
        self.sent_path = root / SENT_FILE
        self._lock = threading.RLock()  # each file's read-modify-write is one step

    def ids(self) -> list[str]:
        """The images fetched in ephemeral mode and not released yet."""
        try:
            return list(json.loads(self.ephemeral_path.read_text()))
        except (OSError, ValueError):
            return []

    def remember(self, image_id: str) -> None:
        with self._lock:
            ids = self.ids()
            if image_id not in ids:
                ids.append(image_id)
                _write_json(self.ephemeral_path, ids)

    def forget(self, image_id: str) -> None:
        """The image was released or deleted: forget that it was fetched and what was sent."""
        with self._lock:
            ids = self.ids()
            if image_id in ids:
                ids.remove(image_id)
                _write_json(self.ephemeral_path, ids)
            sent = self._sent()
            if sent.pop(image_id, None) is not None:
                self._write_sent(sent)

    def sent_revisions(self, image_id: str) -> list[int]:
        return self._sent().get(image_id, [])

    def mark_sent(self, image_id: str, revision: int) -> None:
        with self._lock:
            sent = self._sent()
            sent[image_id] = sorted(set(sent.get(image_id, [])) | {int(revision)})
            self._write_sent(sent)

    def _sent(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.sent_path.read_text())
            return {str(k): [int(r) for r in v] for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write_sent(self, sent: dict[str, list[int]]) -> None:
        if not sent:
            self.sent_path.unlink(missing_ok=True)
            return
        _write_json(self.sent_path, sent)


class EphemeralMode:
    """Ephemeral mode over the series ``fetched`` into a local store (see module doc); with
    ``enabled=False`` nothing is released, but sent revisions are still recorded.

    ``lock`` makes the "unsent?" check and the deletion of a release one step, against label
    saves and `mark_sent` (lock order everywhere: this lock, then the others); ``released``
    holds each released image's latest revision (a save based on it starts the image afresh)."""

    def __init__(self, fetched: FetchedSeries, *, enabled: bool) -> None:
        self.enabled = enabled
        self.fetched = fetched
        self.local = fetched.local
        self.source = fetched.source
        self.ledger = EphemeralLedger(self.local.root)
        self.lock = threading.RLock()
        self.released: dict[str, int | None] = {}  # image id -> its latest revision when released

    def remember(self, image_id: str) -> None:
        """About to fetch ``image_id``: in ephemeral mode, recorded first (a crash leaves no unknown copy)."""
        if self.enabled:
            self.ledger.remember(image_id)

    def forget(self, image_id: str) -> None:
        """The image's local copy is gone: forget its fetch and what was sent of it."""
        with self.lock:
            self.ledger.forget(image_id)

    def is_ephemeral_image(self, image_id: str) -> bool:
        return self.enabled and image_id in self.ledger.ids()

    def mark_sent(self, image_id: str, revision: int) -> None:
        with self.lock:
            self.ledger.mark_sent(image_id, revision)

    def sent_revisions(self, image_id: str) -> list[int]:
        return self.ledger.sent_revisions(image_id)

    def unsent_revisions(self, image_id: str) -> list[int]:
        """The revisions a release would lose: those after the last one sent to the PACS; none when
        the latest revision was sent (it carries the earlier ones) or there is no revision."""
        if not self.fetched.in_local(image_id):  # not fetched, or just fetched: no revision yet
            return []
        revisions = [r.revision for r in self.local.list_revisions(image_id)]
        if not revisions:
            return []
        sent = set(self.sent_revisions(image_id))
        if max(revisions) in sent:
            return []
        last_sent = max(sent, default=0)
        return sorted(r for r in revisions if r > last_sent)

    def release(self, image_id: str, *, discard_unsent: bool = False) -> Release:
        """Delete a fetched image (voxels, headers, WADO cache entry, label revisions) from local
        disk now — unless a revision would be lost that was not sent to the PACS: then nothing is
        deleted and the answer says ``unsent`` (``discard_unsent=True`` deletes them anyway)."""
        if not self.enabled:
            return Release(image_id, False, "not_ephemeral")
        if not image_id.startswith(ID_PREFIX):
            return Release(image_id, False, "not_from_pacs")  # an upload is the user's, not a cached copy
        self.fetched.settle(image_id)
        with self.lock:
            try:
                record = self.local.get_image(image_id)
            except NotFoundError:
                self.forget(image_id)
                return Release(image_id, False, "not_fetched")
            unsent = self.unsent_revisions(image_id)
            if unsent and not discard_unsent:
                return Release(image_id, False, "unsent", tuple(unsent))
            self.local.delete_image(image_id)
            self.fetched.drop_old_views(image_id=image_id)
            self.released[image_id] = record.latest_revision
            self.forget(image_id)
            self.fetched.used.pop(image_id, None)
            series_uid = str(record.metadata.get("series_uid") or "")
            if series_uid:
                self.source.drop(series_uid)
        checkpoint_sqlite(self.local.url)
        log.info("ephemeral: released %s from local disk%s", image_id,
                 f" (discarded unsent revision(s) {unsent})" if unsent else "")
        return Release(image_id, True, "discarded_unsent" if unsent else "released", tuple(unsent))

    def held(self) -> dict[str, list[int]]:
        """Ephemeral images kept on disk because a label revision of theirs was not sent: id -> revisions."""
        if not self.enabled:
            return {}
        out = {}
        for image_id in self.ledger.ids():
            unsent = self.unsent_revisions(image_id)
            if unsent:
                out[image_id] = unsent
        return out

    def idle(self, idle_seconds: float, busy: Iterable[str] = ()) -> list[str]:
        """Ephemeral images fetched here, not in ``busy`` (open sessions) and unused for
        ``idle_seconds`` (the clock starts at the fetch, or now for a leftover of an earlier run)."""
        if not self.enabled:
            return []
        now, skip = time.time(), set(busy)
        out = []
        for image_id in self.ledger.ids():
            used = self.fetched.used.setdefault(image_id, now)
            if image_id not in skip and now - used > idle_seconds and self.fetched.is_fetched(image_id):
                out.append(image_id)
        return out

    def purge(self, *, discard_unsent: bool = False) -> list[str]:
        """Delete every image fetched in ephemeral mode — except those holding a label revision
        that was not sent to the PACS (kept and logged; ``discard_unsent=True`` deletes them
        too) — and the whole WADO cache."""
        removed, kept = [], {}
        with self.lock:
            for image_id in self.ledger.ids():
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


def checkpoint_sqlite(url: str) -> None:
    """Fold SQLite's write-ahead log into the database at ``url`` and truncate it, so the old page
    images of deleted rows do not stay in the WAL file (best effort while readers are busy)."""
    if not url.startswith("sqlite:///"):
        return
    db = Path(url.removeprefix("sqlite:///"))
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


def compact_sqlite(url: str) -> None:
    """Rewrite the SQLite database at ``url`` so deleted rows (patient metadata) do not linger in
    free pages or the write-ahead log."""
    if not url.startswith("sqlite:///"):
        return
    db = Path(url.removeprefix("sqlite:///"))
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


def _write_json(path: Path, data: Any) -> None:
    """Replace ``path`` whole: written beside it, then renamed."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
