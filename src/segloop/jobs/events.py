"""A small thread-safe publish/subscribe bus for live events.

Events are plain dicts ``{"type": ..., "time": ISO-8601, "seq": n, "data": {...}}``. Types:

- ``job.state``      a job changed state (queued, running, done, failed, cancelled, interrupted)
- ``job.progress``   progress of a running job (training: epoch, loss, val_dice, eta_seconds)
- ``model.version``  a new model version was recorded (or the current one changed)
- ``label.revision`` a new label revision was saved (or one was marked final)
- ``image.added`` / ``image.deleted``

Subscribers are callables invoked on the publishing thread; they must not block (the server's
subscriber hands the event to the event loop with ``call_soon_threadsafe``). A subscriber that
raises is dropped.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._recent: deque[Event] = deque(maxlen=history)

    def subscribe(self, callback: Subscriber) -> int:
        with self._lock:
            token = next(self._ids)
            self._subscribers[token] = callback
            return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subscribers.pop(token, None)

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        with self._lock:
            event: Event = {
                "type": type_,
                "seq": next(self._seq),
                "time": datetime.now(UTC).isoformat(),
                "data": data,
            }
            self._recent.append(event)
            subscribers = list(self._subscribers.items())
        for token, callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("event subscriber failed; dropping it")
                self.unsubscribe(token)
        return event

    def recent(self, after_seq: int = 0) -> list[Event]:
        with self._lock:
            return [e for e in self._recent if e["seq"] > after_seq]

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)
