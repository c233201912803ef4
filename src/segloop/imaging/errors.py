"""Errors raised while reading or validating images."""

from __future__ import annotations

from pathlib import Path


class ImagingError(ValueError):
    """An input file or series cannot be read as an image.

    The message always names the offending file (or folder) and the problem, so the CLI and
    the server can show it as one line: ``PATH: problem``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class GeometryError(ValueError):
    """Two volumes that must share a voxel grid (an image and its label) do not."""
