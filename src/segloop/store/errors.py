"""Errors raised by datastores. The server maps them to HTTP status codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of datastore errors."""


class NotFoundError(StoreError, KeyError):
    """An image, revision, model or version does not exist (HTTP 404)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else "not found"


class ConflictError(StoreError):
    """A save was based on a revision that is no longer the latest (HTTP 409).

    Attributes:
        current: the latest revision number at the time of the save (None if there is none).
    """

    def __init__(self, message: str, current: int | None) -> None:
        super().__init__(message)
        self.current = current


class ValidationError(StoreError, ValueError):
    """Data that does not fit the image or the label schema (HTTP 422): wrong shape or affine,
    class values outside the schema, bad names."""
