"""Fixtures for the CLI tier: run `python -m segloop ...` as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HIPPO = SHARED_DATA / "Task04_Hippocampus"


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def segloop() -> Callable[..., Run]:
    def run(*args: str | Path, timeout: float = 300) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "segloop", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc)

    return run


def snapshot(data: Path) -> dict[str, int]:
    """Every file under the data folder (except SQLite's journal files) with its size."""
    if not data.exists():
        return {}
    return {
        str(p.relative_to(data)): p.stat().st_size
        for p in sorted(data.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal")) and "staging" not in p.parts
    }


@pytest.fixture
def hippo_subset(tmp_path: Path) -> Path:
    """A 4-case MSD-layout copy of Task04_Hippocampus."""
    root = tmp_path / "hippo"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"):
        for sub in ("imagesTr", "labelsTr"):
            (root / sub / f"{name}.nii.gz").write_bytes((HIPPO / sub / f"{name}.nii.gz").read_bytes())
    (root / "dataset.json").write_text((HIPPO / "dataset.json").read_text())
    return root
