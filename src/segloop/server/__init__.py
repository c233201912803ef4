"""Layer 5, server: the FastAPI app (`create_app`) with the REST API under ``/api/v1``, live
events (WebSocket and SSE), auth, and a bounded inference pool; background work goes to
`segloop.jobs`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segloop.server.settings import ServerSettings, SettingsError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServerSettings", "SettingsError", "create_app"]


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the FastAPI app (imported lazily: FastAPI and the layers load only when serving)."""
    from segloop.server.app import create_app as _create_app

    return _create_app(settings)
