"""The HTTP side of the DICOMweb source without a PACS: failure classes, the hold, multipart."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from segloop.store.dicomweb import split_multipart
from segloop.store.dicomweb_http import PacsError, PacsLink, from_response


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


def test_refused_connection_is_503_fast_then_held_then_asked_again() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    link = PacsLink(url, timeout=5, hold=0.5)
    t = time.monotonic()
    with pytest.raises(PacsError, match=rf"PACS {url}: QIDO failed: cannot connect") as err:
        link.get("QIDO", "/series")
    assert time.monotonic() - t < 2  # one retry, no back-off ladder
    assert (err.value.status, err.value.code, err.value.retry_after) == (503, "pacs_unreachable", 5)
    with pytest.raises(PacsError, match="STOW failed: not tried, the PACS failed"):
        link.call("STOW", lambda: pytest.fail("asked during the hold"))
    assert link.state()["reachable"] is False
    time.sleep(0.6)
    assert link.call("STOW", lambda: 42) == 42  # after the hold the PACS is asked again
    assert link.state()["reachable"] is True


def test_silent_server_is_504_after_the_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)  # accepts (kernel backlog), never answers
        link = PacsLink(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        with pytest.raises(PacsError, match=r"no answer within 0.5 s") as err:
            link.get("WADO", "/x")
    assert (err.value.status, err.value.code) == (504, "pacs_timeout")


def _response(status: int, body: str = "", headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content = status, body.encode()
    r.headers.update(headers or {})
    return r


def test_error_answers_map_to_502_or_503() -> None:
    auth = from_response(_response(401, "Unauthorized"), "u", "QIDO")
    assert (auth.status, auth.code) == (502, "pacs_auth") and "--dicomweb-auth" in str(auth)
    busy = from_response(_response(503, headers={"Retry-After": "7"}), "u", "WADO")
    assert (busy.status, busy.retry_after) == (503, 7)
    broken = from_response(_response(500, "Cannot transcode"), "u", "WADO")
    assert broken.status == 502 and "HTTP 500: Cannot transcode" in str(broken)


def test_split_multipart() -> None:
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nB\r\nB\r\n--b1--\r\n"
    assert split_multipart('multipart/related; type="application/dicom"; boundary="b1"', body) == [b"AAA", b"B\r\nB"]
    assert split_multipart("application/dicom", b"X") == [b"X"]
    with pytest.raises(ValueError, match="boundary"):
        split_multipart("multipart/related", body)
