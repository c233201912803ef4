"""LocalDatastore: images, label revisions, schema, models — tiny synthetic volumes in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from segloop.imaging import Volume
from segloop.store import (
    ConflictError,
    Datastore,
    LabelClass,
    LabelSchema,
    NotFoundError,
    ValidationError,
    local_files,
)
from segloop.store import local as local_mod
from segloop.store.local import LocalDatastore, open_datastore, slugify

SHAPE = (4, 5, 6)


def _affine(shift: float = 0.0) -> np.ndarray:
    aff = np.diag([0.8, 0.9, 2.5, 1.0])
    aff[:3, 3] = [-10.0 + shift, 20.0, 3.25]
    return aff


def _image(seed: int = 0, shape: tuple[int, ...] = SHAPE, **meta: Any) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(size=shape).astype(np.float32), _affine(), dict(meta))


def _label(value: int = 1, lo: int = 1, hi: int = 3) -> np.ndarray:
    arr = np.zeros(SHAPE, dtype=np.uint8)
    arr[lo:hi, lo:hi, lo:hi] = value
    return arr


SCHEMA = LabelSchema(
    (
        LabelClass(0, "background", (0, 0, 0)),
        LabelClass(1, "liver", (255, 0, 0)),
        LabelClass(2, "tumour", (0, 255, 0)),
    )
)


@pytest.fixture
def store(tmp_path: Path) -> LocalDatastore:
    st = open_datastore(tmp_path / "store")
    st.set_schema(SCHEMA)
    return st


def _files(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file())


def _snapshot(st: LocalDatastore) -> tuple[Any, ...]:
    """Everything visible plus every file on disk, to prove an error changed nothing."""
    images = st.list_images()
    revisions = {i.id: st.list_revisions(i.id) for i in images}
    files = sorted(
        str(p.relative_to(st.root)) for p in st.root.rglob("*") if p.is_file() and "segloop.db" not in p.name
    )
    return images, revisions, st.list_models(), st.get_schema(), files


# --- store basics ----------------------------------------------------------------------------


def test_open_creates_layout_and_satisfies_protocol(tmp_path: Path) -> None:
    st = open_datastore(tmp_path / "a" / "b")
    assert isinstance(st, Datastore)
    for sub in ("images", "labels", "models", "staging"):
        assert (tmp_path / "a" / "b" / sub).is_dir()
    assert (tmp_path / "a" / "b" / "segloop.db").is_file()
    assert st.staging_dir() == st.root / "staging"
    assert st.list_images() == [] and st.count_images() == 0 and st.list_models() == []
    assert st.final_labels() == []
    with st._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 1000


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    st = open_datastore(tmp_path)
    st.set_schema(SCHEMA)
    rec = st.add_image(_image(), "a", "upload")
    st.save_label(rec.id, _label(), author="ann")
    st.close()
    again = LocalDatastore(tmp_path)
    assert again.get_image(rec.id) == st.get_image(rec.id)
    assert again.get_schema() == SCHEMA
    assert [r.revision for r in again.list_revisions(rec.id)] == [1]


# --- images -----------------------------------------------------------------------------------


def test_add_get_load_image_round_trip(store: LocalDatastore) -> None:
    vol = _image(modality="MR", patient_id="P1", weird=np.float64(1.5), arr=np.arange(3))
    rec = store.add_image(vol, "Case 001.nii.gz", "upload:case_001.nii.gz")
    assert rec.id == "Case-001"
    assert rec.name == "Case 001.nii.gz"
    assert rec.source == "upload:case_001.nii.gz"
    assert rec.modality == "MR"
    assert rec.shape == SHAPE and rec.channels == 1
    assert rec.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert np.array_equal(np.array(rec.affine), _affine())
    assert (
        rec.metadata["patient_id"] == "P1"
        and rec.metadata["weird"] == 1.5
        and rec.metadata["arr"] == [0, 1, 2]
    )
    assert rec.created_at.tzinfo is not None
    assert rec.label_state == "none" and rec.latest_revision is None
    assert store.get_image(rec.id) == rec
    path = store.image_path(rec.id)
    assert path == store.root / "images" / "Case-001.nii.gz" and path.is_file()
    assert path.read_bytes()[8] == 4  # gzip XFL=4: fastest compression level
    loaded = store.load_image(rec.id)
    assert np.array_equal(loaded.array, vol.array) and loaded.array.dtype == np.float32
    assert np.array_equal(loaded.affine, _affine())
    assert loaded.metadata["image_id"] == rec.id
    json.dumps(rec.to_dict())


def test_add_image_multichannel_and_modality_override(store: LocalDatastore) -> None:
    vol = Volume(np.zeros((*SHAPE, 2), np.int16), _affine(), {"modality": "MR"})
    rec = store.add_image(vol, "mc", "upload", modality="CT")
    assert rec.channels == 2 and rec.shape == SHAPE and rec.modality == "CT"
    assert store.load_image(rec.id).array.shape == (*SHAPE, 2)
    assert store.add_image(_image(), "nomod", "upload").modality == "unknown"


def test_duplicate_names_get_numbered_ids(store: LocalDatastore) -> None:
    ids = [
        store.add_image(_image(), name, "upload").id
        for name in ("liver", "liver", "LIVER", "liver-2", "liver")
    ]
    assert ids == ["liver", "liver-2", "LIVER-3", "liver-2-2", "liver-4"]
    assert len({i.lower() for i in ids}) == len(ids)  # distinct on case-insensitive filesystems


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../x", "x"),
        ("/etc/passwd", "etc-passwd"),
        ("a/../../b", "a-b"),
        ("..", "image"),
        (".hidden", "hidden"),
        ("C:\\Windows\\sys", "C-Windows-sys"),
        ("ünï cødé", "uni-c-de"),
        ("-rf", "rf"),
    ],
)
def test_path_trick_names_stay_inside_root(store: LocalDatastore, name: str, expected: str) -> None:
    rec = store.add_image(_image(), name, "upload")
    assert rec.id == expected and rec.name == name
    path = store.image_path(rec.id).resolve()
    assert path.parent == (store.root / "images").resolve()
    store.save_label(rec.id, _label(), author="a")
    assert store.get_revision(rec.id).path.resolve().is_relative_to((store.root / "labels").resolve())


def test_bad_names_are_refused_and_nothing_stored(store: LocalDatastore) -> None:
    before = _snapshot(store)
    for name in ("", "   ", "a\x00b", "tab\there"):
        with pytest.raises(ValidationError):
            store.add_image(_image(), name, "upload")
    with pytest.raises(ValidationError):
        store.add_image(_image(), "ok", "")
    assert _snapshot(store) == before
    assert list((store.root / "staging").iterdir()) == []


def test_slugify_rules() -> None:
    long = slugify("x" * 500)
    assert len(long) <= 120 and set(long) == {"x"}
    assert slugify("case.nii") == "case" and slugify(".nii.gz") == "nii.gz"
    for raw in ("../../../etc", "a\x00b", "/", "...", "-", "a b/c"):
        s = slugify(raw)
        assert s and not s.startswith((".", "-")) and "/" not in s and "\x00" not in s


def test_delete_image_removes_rows_and_files(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "gone", "upload")
    keep = store.add_image(_image(), "kept", "upload")
    store.save_label(rec.id, _label(), author="a", status="final")
    store.save_label(rec.id, _label(2), author="a", base_revision=1)
    store.delete_image(rec.id)
    with pytest.raises(NotFoundError):
        store.get_image(rec.id)
    with pytest.raises(NotFoundError):
        store.list_revisions(rec.id)
    assert [i.id for i in store.list_images()] == [keep.id]
    assert store.final_labels() == []
    assert not (store.root / "labels" / rec.id).exists()
    assert _files(store.root, "images") == [store.image_path(keep.id)]
    assert list((store.root / "staging").iterdir()) == []
    with pytest.raises(NotFoundError):
        store.delete_image(rec.id)
    again = store.add_image(_image(), "gone", "upload")  # the id is free again, with no history
    assert again.id == "gone" and store.list_revisions("gone") == []


def test_unknown_image_is_not_found(store: LocalDatastore) -> None:
    for call in (
        lambda: store.get_image("nope"),
        lambda: store.load_image("nope"),
        lambda: store.image_path("nope"),
        lambda: store.list_revisions("nope"),
        lambda: store.get_revision("nope"),
        lambda: store.save_label("nope", _label(), author="a"),
        lambda: store.mark_final("nope", 1, author="a"),
    ):
        with pytest.raises(NotFoundError):
            call()


# --- label schema ------------------------------------------------------------------------------


def test_schema_default_and_background_added(tmp_path: Path) -> None:
    st = open_datastore(tmp_path)
    assert st.get_schema() == LabelSchema((LabelClass(0, "background", (0, 0, 0)),))
    st.set_schema(LabelSchema((LabelClass(3, "spleen", (1, 2, 3)), LabelClass(1, "liver"))))
    schema = st.get_schema()
    assert [c.value for c in schema.classes] == [0, 1, 3]
    assert schema.by_name("SPLEEN").color == (1, 2, 3)


@pytest.mark.parametrize(
    "classes",
    [
        (LabelClass(1, "a"), LabelClass(2, "A")),
        (LabelClass(1, "a"), LabelClass(1, "b")),
        (LabelClass(70000, "big"),),
        (LabelClass(-1, "neg"),),
        (LabelClass(1, ""),),
        (LabelClass(1, "c", (256, 0, 0)),),
        (LabelClass(1, "c", (1, 2)),),  # type: ignore[arg-type]
        (LabelClass(1, "background"),),
    ],
)
def test_schema_validation_leaves_schema(store: LocalDatastore, classes: tuple[LabelClass, ...]) -> None:
    with pytest.raises(ValidationError):
        store.set_schema(LabelSchema(classes))
    assert store.get_schema() == SCHEMA


def test_schema_cannot_drop_a_class_that_labels_use(store: LocalDatastore) -> None:
    image = store.add_image(Volume(np.zeros((4, 5, 6), np.float32), np.eye(4)), "img", "test")
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 1, 1] = max(c.value for c in SCHEMA.foreground)
    store.save_label(image.id, label, author="a")
    used = SCHEMA.by_value(int(label.max()))
    others = tuple(c for c in SCHEMA.classes if c.value not in (0, used.value))
    with pytest.raises(ValidationError, match=rf"drops classes .*'{used.name}' \(value {used.value}, in 1 revision\)"):
        store.set_schema(LabelSchema(others))
    assert store.get_schema() == SCHEMA
    # renaming / recolouring a used class, or dropping an unused one, is fine
    renamed = LabelSchema((LabelClass(used.value, "renamed", (9, 9, 9)),))
    store.set_schema(renamed)
    assert store.get_schema().by_value(used.value).name == "renamed"
    assert [c.value for c in store.get_schema().classes] == [0, used.value]


# --- label revisions ---------------------------------------------------------------------------


def test_revisions_are_append_only_with_parents(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    r1 = store.save_label(rec.id, _label(1), author="ann", source="model:unet@1")
    r2 = store.save_label(rec.id, _label(2), author="bob", base_revision=1)
    r3 = store.save_label(rec.id, _label(1, 0, 4), author="ann", source="interactive", base_revision=2)
    assert [(r.revision, r.parent) for r in (r1, r2, r3)] == [(1, None), (2, 1), (3, 2)]
    assert r1.source == "model:unet@1" and r3.source == "interactive" and r2.author == "bob"
    assert store.list_revisions(rec.id) == [r1, r2, r3]
    assert store.get_revision(rec.id) == r3 and store.get_revision(rec.id, 2) == r2
    paths = [r.path for r in (r1, r2, r3)]
    assert len(set(paths)) == 3 and all(p.is_file() for p in paths)
    assert [p.name[:7] for p in paths] == ["r000001", "r000002", "r000003"]
    assert r1.voxel_counts == {0: 112, 1: 8, 2: 0} and r2.voxel_counts == {0: 112, 1: 0, 2: 8}
    # older revisions still hold their own data
    assert np.array_equal(store.load_label(rec.id, 1).array, _label(1))
    assert np.array_equal(store.load_label(rec.id, 2).array, _label(2))
    latest = store.load_label(rec.id)
    assert np.array_equal(latest.array, _label(1, 0, 4)) and latest.array.dtype == np.uint8
    assert np.array_equal(latest.affine, _affine())
    image = store.get_image(rec.id)
    assert (image.latest_revision, image.latest_author, image.label_state) == (3, "ann", "draft")
    with pytest.raises(NotFoundError):
        store.get_revision(rec.id, 4)
    json.dumps(r3.to_dict())


def test_volume_label_and_dtypes(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, Volume(_label(2), _affine() + 1e-5), author="a")  # within tolerance
    store.save_label(rec.id, _label(1).astype(np.float64), author="a", base_revision=1)
    store.save_label(rec.id, _label(1).astype(bool), author="a", base_revision=2)
    store.save_label(rec.id, _label(2).astype(np.int64)[..., None], author="a", base_revision=3)
    assert all(store.load_label(rec.id, n).array.dtype == np.uint8 for n in (1, 2, 3, 4))
    assert np.array_equal(store.load_label(rec.id, 2).array, _label(1))
    store.set_schema(LabelSchema((*SCHEMA.classes, LabelClass(300, "big", (1, 1, 1)))))
    rev = store.save_label(rec.id, _label(1).astype(np.uint16) * 300, author="a", base_revision=4)
    loaded = store.load_label(rec.id, rev.revision).array
    assert loaded.dtype == np.uint16 and int(loaded.max()) == 300 and rev.voxel_counts[300] == 8


def test_no_revision_yet(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    assert store.list_revisions(rec.id) == []
    with pytest.raises(NotFoundError):
        store.get_revision(rec.id)
    with pytest.raises(NotFoundError):
        store.load_label(rec.id)
    with pytest.raises(ConflictError) as err:
        store.save_label(rec.id, _label(), author="a", base_revision=1)
    assert err.value.current is None


@pytest.mark.parametrize(("base", "current"), [(None, 2), (1, 2), (5, 2)])
def test_stale_base_conflicts_and_writes_nothing(
    store: LocalDatastore, base: int | None, current: int
) -> None:
    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, _label(1), author="a")
    store.save_label(rec.id, _label(2), author="a", base_revision=1)
    before = _snapshot(store)
    with pytest.raises(ConflictError) as err:
        store.save_label(rec.id, _label(1), author="b", base_revision=base)
    assert err.value.current == current
    assert str(current) in str(err.value)
    assert _snapshot(store) == before


def test_wrong_shape_or_affine_is_refused_naming_both(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, _label(), author="a")
    before = _snapshot(store)
    with pytest.raises(ValidationError) as err:
        store.save_label(rec.id, np.zeros((4, 5, 7), np.uint8), author="a", base_revision=1)
    assert "(4, 5, 7)" in str(err.value) and "(4, 5, 6)" in str(err.value)
    with pytest.raises(ValidationError) as err:
        store.save_label(
            rec.id, Volume(np.zeros((6, 5, 4), np.uint8), _affine()), author="a", base_revision=1
        )
    assert "(6, 5, 4)" in str(err.value) and "(4, 5, 6)" in str(err.value)
    with pytest.raises(ValidationError) as err:
        store.save_label(rec.id, Volume(_label(), _affine(shift=5.0)), author="a", base_revision=1)
    msg = str(err.value)
    assert "affine" in msg and "-5.0" in msg and "-10.0" in msg  # both translations shown
    with pytest.raises(ValidationError):
        store.save_label(rec.id, np.zeros((*SHAPE, 2), np.uint8), author="a", base_revision=1)
    with pytest.raises(ValidationError):
        store.save_label(rec.id, [[[0]]], author="a", base_revision=1)  # type: ignore[arg-type]
    assert _snapshot(store) == before


def test_values_outside_schema_are_refused_listing_them(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    before = _snapshot(store)
    bad = _label(1)
    bad[0, 0, 0] = 7
    bad[0, 0, 1] = 9
    with pytest.raises(ValidationError) as err:
        store.save_label(rec.id, bad, author="a")
    assert "[7, 9]" in str(err.value)
    neg = _label(1).astype(np.int16)
    neg[0, 0, 0] = -3
    with pytest.raises(ValidationError) as err:
        store.save_label(rec.id, neg, author="a")
    assert "-3" in str(err.value)
    frac = _label(1).astype(np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(ValidationError) as err:
        store.save_label(rec.id, frac, author="a")
    assert "0.5" in str(err.value)
    nan = _label(1).astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValidationError):
        store.save_label(rec.id, nan, author="a")
    with pytest.raises(ValidationError):
        store.save_label(rec.id, _label().astype(np.complex64), author="a")
    for kwargs in ({"author": ""}, {"author": "a", "status": "done"}, {"author": "a", "base_revision": 0}):
        with pytest.raises(ValidationError):
            store.save_label(rec.id, _label(), **kwargs)
    assert _snapshot(store) == before


# --- label state, final labels ------------------------------------------------------------------


def test_label_state_listing_and_final_labels(store: LocalDatastore) -> None:
    ids = [store.add_image(_image(i), f"img{i}", "upload").id for i in range(6)]
    store.save_label(ids[1], _label(), author="a")  # draft
    store.save_label(ids[2], _label(), author="a", status="final")  # final
    store.save_label(ids[3], _label(), author="a")
    final3 = store.mark_final(ids[3], 1, author="reviewer")
    store.save_label(ids[3], _label(2), author="b", base_revision=1)  # a newer draft on top of a final
    store.save_label(ids[4], _label(), author="a")
    store.save_label(ids[4], _label(2), author="a", base_revision=1)
    store.mark_final(ids[4], 1, author="r")  # an older revision: state follows the latest (draft)

    assert final3.status == "final" and final3.finalized_by == "reviewer" and final3.finalized_at is not None
    assert [i.id for i in store.list_images()] == ids
    assert [i.id for i in store.list_images(label_state="none")] == [ids[0], ids[5]]
    assert [i.id for i in store.list_images(label_state="draft")] == [ids[1], ids[3], ids[4]]
    assert [i.id for i in store.list_images(label_state="final")] == [ids[2]]
    assert [store.count_images(s) for s in ("none", "draft", "final")] == [2, 3, 1]
    assert store.count_images() == 6
    assert [i.id for i in store.list_images(offset=2, limit=3)] == ids[2:5]
    assert [i.id for i in store.list_images(label_state="draft", offset=1, limit=1)] == [ids[3]]
    assert store.list_images(limit=0) == []
    finals = store.final_labels()
    assert [(r.image_id, r.revision) for r in finals] == [(ids[2], 1), (ids[3], 1), (ids[4], 1)]
    assert finals[0].finalized_by == "a"
    store.mark_final(ids[3], 2, author="r")
    assert store.get_image(ids[3]).label_state == "final"
    assert (ids[3], 2) in [(r.image_id, r.revision) for r in store.final_labels()]
    again = store.mark_final(ids[3], 1, author="someone-else")  # already final: unchanged
    assert again.finalized_by == "reviewer"
    with pytest.raises(NotFoundError):
        store.mark_final(ids[0], 1, author="r")
    with pytest.raises(ValidationError):
        store.list_images(label_state="done")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.list_images(offset=-1)


def test_listing_is_one_query_without_n_plus_one(store: LocalDatastore) -> None:
    for i in range(30):
        rec = store.add_image(Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4)), f"i{i}", "upload")
        if i % 3:
            store.save_label(
                rec.id, np.zeros((2, 2, 2), np.uint8), author="a", status="final" if i % 2 else "draft"
            )
    selects: list[str] = []

    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(store._engine, "before_cursor_execute", _count)
    try:
        assert len(store.list_images(label_state="final")) == 10
        assert len(store.list_images()) == 30
        assert store.count_images("draft") == 10
        assert len(store.final_labels()) == 10
    finally:
        event.remove(store._engine, "before_cursor_execute", _count)
    assert len(selects) == 4


# --- failures mid-save leave the store as it was -----------------------------------------------------


def test_failed_rename_leaves_previous_state(store: LocalDatastore, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, _label(), author="a")
    before = _snapshot(store)

    def boom(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(local_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save_label(rec.id, _label(2), author="a", base_revision=1)
    monkeypatch.undo()
    assert _snapshot(store) == before
    assert store.save_label(rec.id, _label(2), author="a", base_revision=1).revision == 2


def test_failed_insert_removes_the_file(store: LocalDatastore, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, _label(), author="a")
    before = _snapshot(store)

    def boom(self: LocalDatastore, row: Any, base: int | None) -> None:
        assert Path(self.root / row.path).is_file()  # the file is in place, the row is not yet
        raise RuntimeError("database went away")

    monkeypatch.setattr(LocalDatastore, "_commit_revision", boom)
    with pytest.raises(RuntimeError):
        store.save_label(rec.id, _label(2), author="a", base_revision=1)
    assert _snapshot(store) == before


def test_failed_add_image_stores_nothing(store: LocalDatastore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_image(_image(), "first", "upload")
    before = _snapshot(store)
    real_fsync_dir = local_files._fsync_dir

    def boom(path: Path) -> None:
        if path.name == "images":
            raise OSError("crash after rename")
        real_fsync_dir(path)

    monkeypatch.setattr(local_files, "_fsync_dir", boom)
    with pytest.raises(OSError):
        store.add_image(_image(), "second", "upload")
    assert _snapshot(store) == before


# --- concurrency: threads ---------------------------------------------------------------------------


def test_two_threads_on_the_same_base_exactly_one_wins(
    store: LocalDatastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    rec = store.add_image(_image(), "img", "upload")
    store.save_label(rec.id, _label(), author="a")
    barrier = threading.Barrier(2, timeout=30)
    real = LocalDatastore._commit_revision

    def racing(self: LocalDatastore, row: Any, base: int | None) -> None:
        barrier.wait()  # both have passed the early check and written their files
        real(self, row, base)

    monkeypatch.setattr(LocalDatastore, "_commit_revision", racing)
    results: list[Any] = []

    def save(value: int) -> None:
        try:
            results.append(store.save_label(rec.id, _label(value), author=f"t{value}", base_revision=1))
        except Exception as exc:  # noqa: BLE001 - collected for the assertions below
            results.append(exc)

    threads = [threading.Thread(target=save, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and len(losses) == 1
    assert isinstance(losses[0], ConflictError) and losses[0].current == 2
    revs = store.list_revisions(rec.id)
    assert [(r.revision, r.parent) for r in revs] == [(1, None), (2, 1)]
    assert revs[1].author == wins[0].author
    assert len(_files(store.root, "labels")) == 2  # the loser's file is gone
    assert list((store.root / "staging").iterdir()) == []


def test_many_threads_retrying_build_one_chain(store: LocalDatastore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rec = store.add_image(_image(), "img", "upload")

    def editor(n: int) -> int:
        conflicts = 0
        for _ in range(3):
            while True:
                base = store.get_image(rec.id).latest_revision
                try:
                    store.save_label(rec.id, _label(1 + n % 2), author=f"e{n}", base_revision=base)
                    break
                except ConflictError:
                    conflicts += 1
        return conflicts

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(editor, range(4)))
    revs = store.list_revisions(rec.id)
    assert [r.revision for r in revs] == list(range(1, 13))
    assert [r.parent for r in revs] == [None, *range(1, 12)]
    assert len(_files(store.root, "labels")) == 12


# --- models --------------------------------------------------------------------------------------------


def _checkpoint(store: LocalDatastore, content: bytes = b"weights") -> Path:
    path = store.staging_dir() / f"ckpt-{os.urandom(4).hex()}.pt"
    path.write_bytes(content)
    return path


def test_models_versions_and_current(store: LocalDatastore) -> None:
    cfg = {"arch": "unet", "channels": [8, 16], "lr": 1e-3}
    model = store.create_model("liver-unet", cfg)
    assert model.name == "liver-unet" and model.config == cfg and model.current_version is None
    assert store.create_model("liver-unet", dict(cfg)) == model
    with pytest.raises(ValidationError):
        store.create_model("liver-unet", {"arch": "other"})
    for bad in ("../x", "", "a/b", ".x", "x" * 200):
        with pytest.raises(ValidationError):
            store.create_model(bad, cfg)

    v1 = store.add_model_version(
        "liver-unet",
        _checkpoint(store, b"one"),
        config=cfg,
        trained_on=[("a", 1), ("b", 2)],
        metrics={"dice": np.float32(0.5), "nan": float("nan")},
    )
    assert v1.version == 1 and v1.checkpoint == store.root / "models" / "liver-unet" / "v0001.pt"
    assert v1.checkpoint.read_bytes() == b"one" and v1.trained_on == (("a", 1), ("b", 2))
    assert v1.metrics == {"dice": 0.5, "nan": None}
    v2 = store.add_model_version(
        "liver-unet", _checkpoint(store, b"two"), config=cfg, trained_on=[], metrics={}
    )
    v3 = store.add_model_version(
        "liver-unet", _checkpoint(store, b"three"), config=cfg, trained_on=[], metrics={}, make_current=False
    )
    model = store.get_model("liver-unet")
    assert model.current_version == 2 and [v.version for v in model.versions] == [1, 2, 3]
    assert model.version().checkpoint.read_bytes() == b"two" and v2.version == 2 and v3.version == 3
    assert store.set_current_version("liver-unet", 1).current_version == 1
    with pytest.raises(NotFoundError):
        store.set_current_version("liver-unet", 9)
    with pytest.raises(NotFoundError):
        store.set_current_version("nope", 1)
    with pytest.raises(NotFoundError):
        store.get_model("nope")
    assert [m.name for m in store.list_models()] == ["liver-unet"]
    assert list(store.staging_dir().iterdir()) == []
    json.dumps(store.get_model("liver-unet").to_dict())


def test_failed_add_model_version_keeps_current(
    store: LocalDatastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_model("m", {})
    store.add_model_version("m", _checkpoint(store, b"good"), config={}, trained_on=[], metrics={})
    ckpt = _checkpoint(store, b"new")
    before = _snapshot(store)

    def boom(path: Path) -> None:
        raise OSError("crash after the move, before the commit")

    monkeypatch.setattr(local_files, "_fsync_dir", boom)
    with pytest.raises(OSError):
        store.add_model_version("m", ckpt, config={}, trained_on=[], metrics={})
    monkeypatch.undo()
    assert _snapshot(store) == before
    assert ckpt.read_bytes() == b"new"  # back where the trainer left it
    assert store.get_model("m").current_version == 1

    with pytest.raises(NotFoundError):
        store.add_model_version("other", ckpt, config={}, trained_on=[], metrics={})
    with pytest.raises(ValidationError):
        store.add_model_version("m", ckpt, config={"x": object()}, trained_on=[], metrics={})
    with pytest.raises(ValidationError):
        store.add_model_version("m", ckpt, config={}, trained_on=[("a",)], metrics={})  # type: ignore[list-item]
    outside = store.root.parent / "outside.pt"
    outside.write_bytes(b"x")
    with pytest.raises(ValidationError):
        store.add_model_version("m", outside, config={}, trained_on=[], metrics={})
    with pytest.raises(ValidationError):
        store.add_model_version("m", store.staging_dir() / "missing.pt", config={}, trained_on=[], metrics={})
    assert outside.is_file() and ckpt.is_file()
    assert _snapshot(store) == before


def test_checkpoint_in_a_staging_subfolder_is_accepted(store: LocalDatastore) -> None:
    store.create_model("m", {})
    sub = store.staging_dir() / "run-1"
    sub.mkdir()
    ckpt = sub / "last.pt"
    ckpt.write_bytes(b"w")
    version = store.add_model_version("m", ckpt, config={}, trained_on=[], metrics={})
    assert version.checkpoint.read_bytes() == b"w" and not ckpt.exists()


# --- maintenance ---------------------------------------------------------------------------------------


def test_sweep_removes_only_old_unreferenced_files(store: LocalDatastore) -> None:
    rec = store.add_image(_image(), "img", "upload")
    rev = store.save_label(rec.id, _label(), author="a")
    store.create_model("m", {})
    version = store.add_model_version("m", _checkpoint(store), config={}, trained_on=[], metrics={})
    orphans = [
        store.root / "labels" / rec.id / "r000002-deadbeef.nii.gz",  # crash between rename and commit
        store.root / "labels" / "deleted-image" / "r000001-00.nii.gz",
        store.root / "images" / "ghost.nii.gz",
        store.root / "models" / "m" / "v0002.pt",
        store.staging_dir() / ".tmp-0123.nii.gz",
    ]
    for path in orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    trainer_file = _checkpoint(store)  # not ours: the sweep never touches it
    assert store.sweep() == []  # everything is young
    old = 1_000_000_000
    for path in [*orphans, rev.path, version.checkpoint, store.image_path(rec.id), trainer_file]:
        os.utime(path, (old, old))
    os.utime(store.root / "labels" / "deleted-image", (old, old))
    removed = store.sweep()
    assert sorted(removed) == sorted(orphans)
    assert not any(p.exists() for p in orphans)
    assert rev.path.is_file() and version.checkpoint.is_file() and store.image_path(rec.id).is_file()
    assert trainer_file.is_file()
    assert np.array_equal(store.load_label(rec.id).array, _label())
