"""Score cache: one small SQLite database (``activelearning.db``) beside the data folder's own.

Rows are keyed by (image id, model name, model version, strategy, params as canonical JSON);
a new model version therefore misses the cache and its scores are recomputed, while old rows
stay valid for their version (and can be pruned with `ScoreCache.prune`). Descriptors for
diversity (independent of the model) are kept in a second table keyed by image id and its
file's modification stamp, and the model's feature vectors that batch-mode strategies
(``typiclust``) order the pool by in a third, keyed like the scores by model version.

The cache is a separate database file on purpose: scoring writes only here, in one short
transaction per batch, and never takes the store's write lock, so saving labels is never blocked.
With a server database (``--db postgresql://...``, `segloop.store.database`) the tables live
there instead, shared by every server and job worker; migrations: `segloop.store.migrations`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

CACHE_FILE = "activelearning.db"

_meta = MetaData()
_scores = Table(
    "al_scores",
    _meta,
    Column("image_id", String, primary_key=True),
    Column("model", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("strategy", String, primary_key=True),
    Column("params", String, primary_key=True),
    Column("score", Float, nullable=False),
    Column("computed_at", String, nullable=False),
)
_descriptors = Table(
    "al_descriptors",
    _meta,
    Column("image_id", String, primary_key=True),
    Column("stamp", String, nullable=False),
    Column("vector", LargeBinary, nullable=False),
)

_features = Table(
    "al_features",
    _meta,
    Column("image_id", String, primary_key=True),
    Column("model", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kind", String, primary_key=True),
    Column("vector", LargeBinary, nullable=False),
    Column("computed_at", String, nullable=False),
)

metadata = _meta  # the cache's tables (for `segloop db upgrade`)


def _chunks(image_ids: Iterable[str], size: int = 500) -> list[list[str]]:
    """``image_ids`` in lists of at most ``size`` (one ``IN (...)`` query each)."""
    ids = list(image_ids)
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def params_key(params: Mapping[str, Any]) -> str:
    """Canonical JSON of strategy parameters (sorted keys, no spaces)."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)


class ScoreCache:
    """Thread- and process-safe score cache in ``<folder>/activelearning.db``."""

    def __init__(self, folder: Path | str, url: str | None = None) -> None:
        from segloop.store.database import resolve
        from segloop.store.migrations import ensure
        from segloop.store.sql import WRITE_OPTION, make_engine

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.url = resolve(folder, "scores", url)
        self.path: Path | None = folder / CACHE_FILE if self.url.startswith("sqlite") else None
        if self.path is not None:
            self._engine = create_engine(
                f"sqlite:///{self.path}", connect_args={"timeout": 30, "check_same_thread": False}
            )

            @event.listens_for(self._engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            # the schema check-and-create through the store's engine settings (BEGIN IMMEDIATE)
            schema_engine = make_engine(self.url)
            try:
                ensure(schema_engine.execution_options(**{WRITE_OPTION: True}), "scores", _meta)
            finally:
                schema_engine.dispose()
        else:
            self._engine = make_engine(self.url)
            ensure(self._engine, "scores", _meta)
        self._lock = threading.Lock()

    def _insert(self) -> Any:
        return postgresql_insert if self._engine.dialect.name == "postgresql" else sqlite_insert

    def close(self) -> None:
        self._engine.dispose()

    def get(self, model: str, version: int, strategy: str, params: Mapping[str, Any], image_ids: Iterable[str]) -> dict[str, float]:
        """Cached scores of ``image_ids`` (those present) as ``{image_id: score}``."""
        key = params_key(params)
        out: dict[str, float] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(image_ids):
                rows = conn.execute(
                    select(_scores.c.image_id, _scores.c.score).where(
                        _scores.c.model == model,
                        _scores.c.version == int(version),
                        _scores.c.strategy == strategy,
                        _scores.c.params == key,
                        _scores.c.image_id.in_(chunk),
                    )
                )
                out.update({str(i): float(s) for i, s in rows})
        return out

    def put(self, model: str, version: int, strategy: str, params: Mapping[str, Any], scores: Mapping[str, float]) -> None:
        """Store scores (one short transaction; existing rows are replaced)."""
        if not scores:
            return
        key = params_key(params)
        now = datetime.now(UTC).isoformat()
        rows = [
            {"image_id": i, "model": model, "version": int(version), "strategy": strategy, "params": key,
             "score": float(s), "computed_at": now}
            for i, s in scores.items()
        ]
        stmt = self._insert()(_scores)
        stmt = stmt.on_conflict_do_update(
            index_elements=["image_id", "model", "version", "strategy", "params"],
            set_={"score": stmt.excluded.score, "computed_at": stmt.excluded.computed_at},
        )
        with self._lock, self._engine.begin() as conn:
            conn.execute(stmt, rows)

    def prune(self, model: str, keep_version: int) -> int:
        """Delete the scores and features of ``model``'s other versions; returns how many rows were deleted."""
        with self._lock, self._engine.begin() as conn:
            res = conn.execute(delete(_scores).where(_scores.c.model == model, _scores.c.version != int(keep_version)))
            feats = conn.execute(
                delete(_features).where(_features.c.model == model, _features.c.version != int(keep_version))
            )
            return int(res.rowcount or 0) + int(feats.rowcount or 0)

    def get_features(self, model: str, version: int, kind: str, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached feature vectors (a batch-mode strategy's description of each image by the model)."""
        out: dict[str, np.ndarray] = {}
        with self._engine.connect() as conn:
            for chunk in _chunks(image_ids):
                rows = conn.execute(
                    select(_features.c.image_id, _features.c.vector).where(
                        _features.c.model == model,
                        _features.c.version == int(version),
                        _features.c.kind == kind,
                        _features.c.image_id.in_(chunk),
                    )
                )
                out.update({str(i): np.frombuffer(v, dtype=np.float32).copy() for i, v in rows})
        return out

    def put_features(self, model: str, version: int, kind: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store feature vectors (one short transaction; existing rows are replaced)."""
        if not vectors:
            return
        now = datetime.now(UTC).isoformat()
        rows = [
            {"image_id": i, "model": model, "version": int(version), "kind": kind,
             "vector": np.asarray(v, dtype=np.float32).tobytes(), "computed_at": now}
            for i, v in vectors.items()
        ]
        stmt = self._insert()(_features)
        stmt = stmt.on_conflict_do_update(
            index_elements=["image_id", "model", "version", "kind"],
            set_={"vector": stmt.excluded.vector, "computed_at": stmt.excluded.computed_at},
        )
        with self._lock, self._engine.begin() as conn:
            conn.execute(stmt, rows)

    def get_descriptor(self, image_id: str, stamp: str) -> np.ndarray | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(_descriptors.c.vector).where(_descriptors.c.image_id == image_id, _descriptors.c.stamp == stamp)
            ).first()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def put_descriptor(self, image_id: str, stamp: str, vector: np.ndarray) -> None:
        stmt = self._insert()(_descriptors).values(
            image_id=image_id, stamp=stamp, vector=np.asarray(vector, dtype=np.float32).tobytes()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["image_id"], set_={"stamp": stmt.excluded.stamp, "vector": stmt.excluded.vector}
        )
        with self._lock, self._engine.begin() as conn:
            conn.execute(stmt)
