"""Every error the server sends is JSON ``{"error": <short code>, "detail": <message>}``, except on the
Open Inference Protocol's inference routes, where it is the protocol's ``{"error": <message>}`` (plus
``"code": <short code>``): OIP clients such as tritonclient show only ``error`` to their user, so there
it must be the message that names the problem.

:class:`ApiError` is raised by our own code; :func:`install_handlers` also turns FastAPI's and
Starlette's own errors (404 unknown route, 405 wrong method, 422 bad query parameter, …) and any
unexpected exception (500, message only — no traceback, no request data) into that shape.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("serve")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, **extra}


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(error, detail, **extra), status_code=status, headers=headers)


def is_oip_infer(path: str) -> bool:
    """Whether ``path`` is an OIP inference route (``/v2/models/{name}[/versions/{v}]/infer``)."""
    return path.startswith("/v2/models/") and path.rstrip("/").endswith("/infer")


def respond(request: Request, status: int, error: str, detail: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """The error in the shape the route's protocol expects (see the module docstring)."""
    if is_oip_infer(request.url.path):
        return JSONResponse({"error": detail, "code": error}, status_code=status, headers=headers)
    return error_response(status, error, detail, headers=headers)


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc.status, exc.error, exc.detail, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405:
            detail = "method not allowed on this endpoint; see /docs for the API"
        return respond(request, exc.status_code, _code_for(exc.status_code), detail,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, 422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return respond(request, 500, "internal_error", "the server failed to handle this request")
