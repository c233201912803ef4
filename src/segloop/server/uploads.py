"""Streaming ``multipart/form-data`` reception: file parts go straight to disk, chunk by chunk.

Nothing is held whole in memory, the request body is capped at a configurable size (the
``Content-Length`` is checked before reading; a body without one is counted while it streams)
and client-supplied file names are reduced to a safe base name. Over the cap → `ApiError` 413
and the partial files are removed by the caller's temporary folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from segloop.server.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 10_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\- ()\[\]]+")


def safe_filename(name: str, index: int) -> str:
    """The base name of a client-supplied path, with odd characters replaced; never empty or dots."""
    base = name.replace("\\", "/").split("/")[-1].replace("\x00", "")
    base = _UNSAFE.sub("_", base).strip(" .")
    if not base or set(base) <= {"."}:
        base = f"upload-{index}"
    return base[:200]


@dataclass
class Received:
    files: list[tuple[str, Path]] = field(default_factory=list)  # (field name, path on disk)
    fields: dict[str, str] = field(default_factory=dict)
    original_names: dict[Path, str] = field(default_factory=dict)
    total_bytes: int = 0

    def files_of(self, name: str) -> list[Path]:
        return [p for f, p in self.files if f == name]


async def receive_multipart(request: Request, dest: Path, max_bytes: int) -> Received:
    """Parse the request's multipart body into ``dest`` (which must exist and be empty)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415, "unsupported_media_type", "expected a multipart/form-data body with file part(s) named 'file'"
        )
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
        if declared > max_bytes:
            raise ApiError(
                413,
                "too_large",
                f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes; nothing was stored",
                limit=max_bytes,
            )
    out = Received()
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "name": None, "file": None, "buf": None}
    used: set[str] = set()

    def on_part_begin() -> None:
        state["headers"] = {}
        state["name"] = None
        state["file"] = None
        state["buf"] = None
        if len(out.files) + len(out.fields) >= MAX_PARTS:
            raise ApiError(413, "too_large", f"more than {MAX_PARTS} parts in one upload")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = b""
        state["value"] = b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in opts:
            original = opts[b"filename"].decode("utf-8", "replace")
            fname = safe_filename(original, len(out.files))
            stem, dot, ext = fname.partition(".")
            candidate, n = fname, 1
            while candidate.lower() in used:
                n += 1
                candidate = f"{stem}-{n}{dot}{ext}"
            used.add(candidate.lower())
            path = dest / candidate
            fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / finally
            state["file"] = fh
            out.files.append((name, path))
            out.original_names[path] = original
        else:
            state["buf"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["file"] is not None:
            state["file"].write(data[start:end])
        elif state["buf"] is not None:
            state["buf"] += data[start:end]
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise ApiError(413, "too_large", f"form field {state['name']!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["file"] is not None:
            state["file"].close()
            state["file"] = None
        elif state["buf"] is not None:
            out.fields[state["name"] or ""] = bytes(state["buf"]).decode("utf-8", "replace")
            state["buf"] = None

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            out.total_bytes += len(chunk)
            if out.total_bytes > max_bytes:
                raise ApiError(
                    413,
                    "too_large",
                    f"upload exceeds the limit of {max_bytes} bytes; nothing was stored",
                    limit=max_bytes,
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise ApiError(400, "bad_request", f"malformed multipart body ({type(exc).__name__}: {exc})") from exc
    finally:
        if state["file"] is not None:
            state["file"].close()
    return out


def one_label_upload(received: Received, what: str, may_finalise: bool) -> tuple[Path, str]:
    """The single file of the part named ``file`` and the ``status`` field (draft / final) of a
    label upload; ``may_finalise``: the caller holds the reviewer role.

    Raises:
        ApiError: 422 for another number of files or an unknown status, 403 for a final label
            without the reviewer role.
    """
    files = received.files_of("file")
    if len(files) != 1:
        raise ApiError(422, "invalid_upload", f"send exactly one {what} in the part named 'file'")
    status = received.fields.get("status", "draft") or "draft"
    if status not in ("draft", "final"):
        raise ApiError(422, "invalid", f"status must be 'draft' or 'final', not {status!r}")
    if status == "final" and not may_finalise:
        raise ApiError(403, "forbidden", "saving a final label needs the reviewer role")
    return files[0], status
