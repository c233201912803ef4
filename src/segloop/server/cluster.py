"""Several servers on one server database (``--db postgresql://...``): what the server adds to
`segloop.jobs.relay.ClusterLink` — interactive sessions tied to the server that holds them.

A session lives in its server's memory (the pre-processed image, the model, the undo history),
so it cannot move. Each server records the sessions it opens in ``server_sessions``; a request
for a session held by another live server is answered **421 Misdirected Request** with that
server's URL (``server_url``, and a ``Location`` header pointing at the same path there), so a
client or a reverse proxy with session affinity knows where to go. A session of a server that
is gone is simply not found (404), as after an expiry.
"""

from __future__ import annotations

import logging
from typing import Any

from segloop.jobs.relay import ClusterLink
from segloop.server.errors import ApiError
from segloop.server.workers import SessionEntry, SessionManager

log = logging.getLogger(__name__)


class ClusterSessions(SessionManager):
    """`SessionManager` that registers its sessions in the shared database."""

    def __init__(self, link: ClusterLink, idle_seconds: float, max_sessions: int, **kwargs: Any) -> None:
        super().__init__(idle_seconds, max_sessions, **kwargs)
        self.link = link

    def add(self, image_id: str, model: str, version: int, owner: str, session: Any) -> SessionEntry:
        entry = super().add(image_id, model, version, owner, session)
        try:
            self.link.claim_session(entry.id)
        except Exception:
            super().close(entry.id)
            raise
        return entry

    def get(self, session_id: str) -> SessionEntry | None:
        entry = super().get(session_id)
        if entry is not None:
            return entry
        holder = self.link.session_server(session_id)
        if holder is not None and holder[0] != self.link.server_id:
            server, url = holder
            raise ApiError(
                421,
                "session_elsewhere",
                f"session {session_id!r} is held by another server ({url}); send its requests there",
                headers={"Location": f"{url.rstrip('/')}/api/v1/sessions/{session_id}"},
                server=server,
                server_url=url,
            )
        return None

    def close(self, session_id: str) -> SessionEntry | None:
        entry = super().close(session_id)
        if entry is not None:
            try:
                self.link.release_session(session_id)
            except Exception:  # the row goes with this server's row at stop, or goes stale
                log.exception("could not unregister session %s", session_id)
        return entry
