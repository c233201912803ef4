"""JSON error bodies everywhere: ``{"error": {"code": ..., "message": ..., ...details}}``.

The layers' own exceptions map to status codes here, so route code can simply let them raise.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from segloop.imaging.errors import GeometryError, ImagingError
from segloop.jobs.records import JobConflict, JobNotFound, JobRejected
from segloop.server.auth import AuthError
from segloop.store.dicomweb_http import PacsError
from segloop.store.errors import ConflictError, NotFoundError, ValidationError
from segloop.store.ingest import IngestError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "busy",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """Raise from a route to answer ``status`` with a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **details), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message, exc.headers, **exc.details)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="segloop"'} if exc.status == 401 else None
        return _json(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _json(exc.status_code, _CODES.get(exc.status_code, "error"), message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
            problems.append(f"{loc}: {e.get('msg', 'invalid')}")
        return _json(422, "invalid", "; ".join(problems) or "invalid request", problems=problems)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _json(404, "not_found", str(exc))

    @app.exception_handler(JobNotFound)
    async def _job_not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return _json(404, "not_found", str(exc))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _json(409, "stale_revision", str(exc), current_revision=exc.current)

    @app.exception_handler(JobConflict)
    async def _job_conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return _json(409, "job_conflict", str(exc), job_id=exc.job_id)

    @app.exception_handler(IngestError)
    async def _ingest(_: Request, exc: IngestError) -> JSONResponse:
        return _json(422, "invalid_upload", str(exc), problems=exc.problems)

    @app.exception_handler(PacsError)
    async def _pacs(_: Request, exc: PacsError) -> JSONResponse:
        # the PACS failed, not the request: 502/503/504, never 422
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return _json(exc.status, exc.code, str(exc), headers, pacs_url=exc.url, operation=exc.operation)

    @app.exception_handler(ImagingError)
    async def _imaging(_: Request, exc: ImagingError) -> JSONResponse:
        return _json(422, "invalid_image", str(exc))

    @app.exception_handler(GeometryError)
    async def _geometry(_: Request, exc: GeometryError) -> JSONResponse:
        return _json(422, "geometry_mismatch", str(exc))

    @app.exception_handler(ValidationError)
    async def _store_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return _json(422, "invalid", str(exc))

    @app.exception_handler(JobRejected)
    async def _job_rejected(_: Request, exc: JobRejected) -> JSONResponse:
        return _json(422, "invalid", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")
