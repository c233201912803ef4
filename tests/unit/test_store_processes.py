"""LocalDatastore shared between processes: racing saves, a crash mid-save, racing imports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segloop.imaging import Volume
from segloop.store import LabelClass, LabelSchema
from segloop.store.local import LocalDatastore, open_datastore

SHAPE = (4, 5, 6)

# Runs in a child process: saves on base 1, pausing after its file is in place (just before the
# transaction) until the parent says go, so both processes really race for the same base.
RACE = r"""
import sys, time
from pathlib import Path
import numpy as np
from segloop.store import ConflictError
from segloop.store.local import LocalDatastore

root, image_id, value, ready, go = sys.argv[1:]
real = LocalDatastore._commit_revision

def racing(self, row, base):
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("parent never said go")
        time.sleep(0.01)
    real(self, row, base)

LocalDatastore._commit_revision = racing
store = LocalDatastore(Path(root))
arr = np.zeros((4, 5, 6), np.uint8)
arr[1:3, 1:3, 1:3] = int(value)
try:
    rev = store.save_label(image_id, arr, author="p" + value, base_revision=1)
    print("WON", rev.revision, rev.author)
except ConflictError as exc:
    print("CONFLICT", exc.current)
"""

# Dies (no clean-up, like a power cut) after the label file is renamed into place but before
# the row is committed.
CRASH = r"""
import os, sys
from pathlib import Path
import numpy as np
from segloop.store.local import LocalDatastore

root, image_id = sys.argv[1:]

def crash(self, row, base):
    assert (self.root / row.path).is_file()
    os._exit(3)

LocalDatastore._commit_revision = crash
store = LocalDatastore(Path(root))
store.save_label(image_id, np.ones((4, 5, 6), np.uint8), author="crasher", base_revision=1)
"""

ADD = r"""
import sys
from pathlib import Path
import numpy as np
from segloop.imaging import Volume
from segloop.store.local import LocalDatastore

store = LocalDatastore(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    print(store.add_image(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)), "dup", "upload").id)
"""


def _run(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalDatastore:
    st = open_datastore(tmp_path / "store")
    st.set_schema(LabelSchema((LabelClass(1, "a"), LabelClass(2, "b"))))
    return st


def _first_revision(st: LocalDatastore) -> str:
    rec = st.add_image(Volume(np.zeros(SHAPE, np.float32), np.eye(4)), "img", "upload")
    st.save_label(rec.id, np.zeros(SHAPE, np.uint8), author="base")
    return rec.id


def test_two_processes_on_the_same_base_exactly_one_wins(store: LocalDatastore, tmp_path: Path) -> None:
    image_id = _first_revision(store)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in (1, 2)]
    procs = [_run(RACE, str(store.root), image_id, str(i), str(ready[i - 1]), str(go)) for i in (1, 2)]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.02)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = sorted(out.strip() for out, _err in outs)
    assert lines[0] == "CONFLICT 2" and lines[1].startswith("WON 2 p"), lines
    revs = store.list_revisions(image_id)
    assert [(r.revision, r.parent) for r in revs] == [(1, None), (2, 1)]
    assert revs[1].author == lines[1].split()[-1]
    assert len([p for p in (store.root / "labels").rglob("*") if p.is_file()]) == 2
    assert list((store.root / "staging").iterdir()) == []


def test_crash_between_rename_and_commit_leaves_no_visible_revision(store: LocalDatastore) -> None:
    image_id = _first_revision(store)
    before = store.list_revisions(image_id)
    proc = _run(CRASH, str(store.root), image_id)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    files = [p for p in (store.root / "labels").rglob("*") if p.is_file()]
    assert len(files) == 2  # the orphan is on disk ...
    assert store.list_revisions(image_id) == before  # ... but not a revision
    assert store.get_image(image_id).latest_revision == 1
    rev = store.save_label(image_id, np.full(SHAPE, 2, np.uint8), author="next", base_revision=1)
    assert rev.revision == 2 and rev.path not in files
    assert int(store.load_label(image_id).array.max()) == 2


def test_two_processes_adding_the_same_name_get_distinct_ids(store: LocalDatastore) -> None:
    procs = [_run(ADD, str(store.root), "4") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = [line for out, _err in outs for line in out.split()]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert sorted(i.id for i in store.list_images()) == sorted(ids)
    assert all(store.image_path(i).is_file() for i in ids)
    assert len(list((store.root / "images").iterdir())) == 8
