"""Shared pytest fixtures (keep minimal; each package adds its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

# tests/conftest.py -> repo root is parents[1]; shared/ sits beside the checkout.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real public datasets, see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (see ARCHITECTURE.md)")
    return SHARED_DATA
