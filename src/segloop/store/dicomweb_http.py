"""HTTP to a DICOMweb server: bounded retries, timeouts, and what a failure means.

`PacsError` is a failure of the PACS (not of the request segloop was asked): unreachable
(connection refused, DNS) → HTTP 503, no answer within the timeout → 504, an error answer (5xx,
credentials refused, anything else unexpected) → 502. Its message names the PACS's URL and the
operation that failed; ``retry_after`` is set where waiting helps.

`PacsLink` holds the `requests.Session` every DICOMweb call goes through:

* a **connect timeout** of at most 3 s and a **read timeout** of ``timeout`` seconds (the time
  the PACS may stay silent; a large series that keeps streaming is not cut off);
* **one** retry of a GET whose connection failed (0.2 s later); no retry of a STOW (the caller
  decides: SEG UIDs are stable, so a re-send never duplicates);
* a **short hold after a failure**: for ``hold`` seconds after the PACS was unreachable or
  silent, further calls fail at once with the same error (a worklist refresh does not wait for
  another timeout), then the next call tries the PACS again — recovery needs no restart;
* `state` — what the last call found (for ``GET /pacs`` and the listing's ``pacs_unreachable``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from segloop.store.errors import StoreError

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0


class PacsError(StoreError):
    """The PACS failed: unreachable (503), timed out (504) or answered an error (502)."""

    def __init__(
        self,
        url: str,
        operation: str,
        problem: str,
        *,
        status: int = 502,
        code: str = "pacs_error",
        retry_after: int | None = None,
        http_status: int | None = None,
    ) -> None:
        self.http_status = http_status  # what the PACS answered, when it answered
        self.url = url
        self.operation = operation
        self.problem = problem
        self.status = status
        self.code = code
        self.retry_after = retry_after
        super().__init__(f"PACS {url}: {operation} failed: {problem}")

    def again(self, operation: str, since: float) -> PacsError:
        """``operation`` not tried: the PACS failed this way a moment ago (during the hold)."""
        ago = max(0.0, time.monotonic() - since)
        return PacsError(
            self.url, operation,
            f"not tried, the PACS failed {ago:.0f} s ago ({self.operation}: {self.problem}); segloop asks again shortly",
            status=self.status, code=self.code, retry_after=self.retry_after, http_status=self.http_status,
        )


def classify(exc: BaseException, url: str, operation: str, timeout: float) -> PacsError:
    """The `PacsError` for an exception raised while talking to the PACS."""
    if isinstance(exc, PacsError):
        return exc
    if isinstance(exc, requests.Timeout) or _read_timeout(exc):
        return PacsError(url, operation, f"no answer within {timeout:g} s (timed out; --dicomweb-timeout)",
                         status=504, code="pacs_timeout", retry_after=max(1, int(timeout)))
    if isinstance(exc, requests.ConnectionError):
        return PacsError(url, operation, f"cannot connect ({_short(exc)})",
                         status=503, code="pacs_unreachable", retry_after=5)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return from_response(exc.response, url, operation)
    return PacsError(url, operation, f"{type(exc).__name__}: {_short(exc)}")


def from_response(response: requests.Response, url: str, operation: str) -> PacsError:
    """The `PacsError` for an error answer of the PACS."""
    status = response.status_code
    body = " ".join((response.text or "")[:200].split())
    said = f"HTTP {status}" + (f": {body}" if body else "")
    if status in (401, 403):
        return PacsError(url, operation, f"the PACS refused segloop's credentials ({said}); check --dicomweb-auth",
                         code="pacs_auth", http_status=status)
    if status == 503:
        retry = response.headers.get("Retry-After", "")
        return PacsError(url, operation, f"the PACS is unavailable ({said})", status=503,
                         code="pacs_unavailable", retry_after=int(retry) if retry.isdigit() else 5,
                         http_status=status)
    return PacsError(url, operation, f"the PACS answered {said}", http_status=status)


def _read_timeout(exc: BaseException) -> bool:
    """urllib3 with a `Retry` turns a read timeout into a `requests.ConnectionError` around
    ``MaxRetryError(reason=ReadTimeoutError)``."""
    if not isinstance(exc, requests.ConnectionError):
        return False
    inner = exc.args[0] if exc.args else None
    return isinstance(getattr(inner, "reason", None), ReadTimeoutError) or "Read timed out" in str(exc)


def _short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 wraps the cause in long reprs: keep the part that says what happened
    for marker in ("Connection refused", "Name or service not known", "Connection reset", "Read timed out",
                   "Remote end closed connection"):
        if marker in text:
            return marker
    return text[:200]


def pacs_fault(err: PacsError) -> bool:
    """The PACS is down, silent, broken or refuses segloop (not: it answered 404/400 to one request)."""
    s = err.http_status
    return s is None or s >= 500 or s in (401, 403)


def transient(err: PacsError) -> bool:
    """Unreachable or silent (not an answer): worth the hold and a later retry."""
    return err.status in (503, 504)


@dataclass
class _Failure:
    error: PacsError
    at: float
    wall: datetime


class PacsLink:
    """The session to one PACS with bounded retries, timeouts, a short hold after failures."""

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        hold: float | None = None,
        pool: int = 16,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the DICOMweb timeout must be positive, got {timeout}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.hold = min(3.0, self.timeout) if hold is None else float(hold)
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=2, backoff_factor=0.2,
                      allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._failure: _Failure | None = None
        self._last_ok: datetime | None = None

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) for `requests`."""
        return (min(CONNECT_TIMEOUT, self.timeout), self.timeout)

    def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which talks to the PACS); failures become `PacsError` and are remembered."""
        with self._lock:
            failure = self._failure
        if failure is not None and transient(failure.error) and time.monotonic() - failure.at < self.hold:
            raise failure.error.again(operation, failure.at)
        try:
            value = fn()
        except Exception as exc:
            if isinstance(exc, (PacsError, requests.RequestException, OSError)):
                err = classify(exc, self.url, operation, self.timeout)
                with self._lock:
                    if pacs_fault(err):
                        self._failure = _Failure(err, time.monotonic(), datetime.now(UTC))
                    else:
                        self._failure, self._last_ok = None, datetime.now(UTC)  # it answered
                raise err from exc
            raise
        with self._lock:
            self._failure = None
            self._last_ok = datetime.now(UTC)
        return value

    def get(self, operation: str, path: str, *, headers: dict[str, str] | None = None,
            stream: bool = False) -> requests.Response:
        """GET ``url + path``; an error answer is a `PacsError`."""

        def go() -> requests.Response:
            r = self.session.get(f"{self.url}{path}", headers=headers, timeout=self.timeouts, stream=stream)
            if r.status_code >= 400:
                raise from_response(r, self.url, operation)
            return r

        return self.call(operation, go)

    def failed(self, operation: str, err: PacsError) -> None:
        """Record a failure found by the caller (e.g. an answer that is not what was asked)."""
        with self._lock:
            self._failure = _Failure(err, time.monotonic(), datetime.now(UTC))

    def state(self) -> dict[str, Any]:
        """``{"reachable": bool | None, "error", "code", "since", "last_ok"}`` after the last call."""
        with self._lock:
            failure, ok = self._failure, self._last_ok
        out: dict[str, Any] = {"reachable": None if failure is None and ok is None else failure is None,
                               "last_ok": ok.isoformat() if ok else None}
        if failure is not None:
            out.update(error=str(failure.error), code=failure.error.code, since=failure.wall.isoformat())
        return out

    def check(self) -> dict[str, Any]:
        """Ask the PACS once (a QIDO study search, limit 1), bypassing the hold: the state then.

        Used at server start, so wrong credentials or a wrong URL are said at once."""
        with self._lock:
            self._failure = None
        with contextlib.suppress(PacsError):
            self.get("checking the connection (QIDO-RS)", "/studies?limit=1",
                     headers={"Accept": "application/dicom+json"})
        return self.state()
