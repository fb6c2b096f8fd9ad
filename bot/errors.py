"""The one error type of the HTTP API and the one place it is rendered.

Every failure reaches the client as `{"status": "error", "error": {"code", "message"}}` with the
right status, never a stack trace:

    FaqbotError(status, code, message)
    ├── raised by routes for domain problems (not_ready, bad_request, …)
    ├── RequestValidationError  -> 422 invalid_request (or 400 invalid_json for unparsable bodies)
    ├── StarletteHTTPException  -> its status, code from the status (not_found, method_not_allowed…)
    └── anything else           -> 500 internal_error (logged with the request id, not shown)
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("faqbot")


class FaqbotError(Exception):
    """An error the client should see: HTTP status, a stable machine code, a human message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 details: object | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def error_body(code: str, message: str, details: object | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"status": "error", "error": error}


def _status_code_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _validation_message(exc: RequestValidationError) -> tuple[str, str, list[dict[str, object]]]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append({"field": loc or "body", "message": err.get("msg", "invalid")})
        if err.get("type") == "json_invalid":
            return "invalid_json", "the request body is not valid JSON", problems
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    return "invalid_request", f"{first['field']}: {first['message']}", problems


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of `app` as the JSON error body."""

    @app.exception_handler(FaqbotError)
    async def _faqbot_error(_: Request, exc: FaqbotError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, problems = _validation_message(exc)
        status = 400 if code == "invalid_json" else 422
        return JSONResponse(error_body(code, message, problems), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _status_code_name(exc.status_code)
        return JSONResponse(error_body(_status_code_name(exc.status_code), message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; it has been logged"), status_code=500)
