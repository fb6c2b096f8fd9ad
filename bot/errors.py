"""HTTP status and the JSON error body: decided here, and nowhere else.

Every failure reaches the client as `{"status": "error", "error": {"code", "message"[, "details"]}}`
with the right status, never a stack trace. The status comes from the error's kind (the tree is
drawn in faq/errors.py), looked up along its class hierarchy in `HTTP_STATUS`:

    InvalidInputError 422 · NotFoundError 404 · ConflictError 409 · UnavailableError 503 (+ Retry-After)
    and the HTTP surface's own errors, defined here: BadRequestError 400 · UnauthorizedError 401
    (+ WWW-Authenticate) · ForbiddenError 403 · MethodNotAllowedError 405 · PayloadTooLargeError 413 ·
    RateLimitedError 429 · RequestTimeoutError 503
    RequestValidationError  -> 422 invalid_request (400 invalid_json for an unparsable body)
    StarletteHTTPException  -> its status, code from the status (not_found, method_not_allowed…)
    anything else, a FaqbotError of no HTTP kind too -> 500 internal_error (logged, not shown)

`error_response(exc)` is the response for one error (the exception handlers, /readyz) and
`error_parts(exc)` its pieces, for the ASGI middleware that answers before FastAPI runs.
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from faq.errors import ConflictError, FaqbotError, InvalidInputError, NotFoundError, UnavailableError

log = logging.getLogger("faqbot")

INTERNAL_MESSAGE = "internal error; it has been logged"


class BadRequestError(FaqbotError):
    """A request body that is not what the route reads (not JSON, not an object, nested too deep)."""

    code = "bad_request"


class UnauthorizedError(FaqbotError):
    """No or a wrong credential: a missing signature, a wrong admin token. `challenge` is the
    WWW-Authenticate value to send, if the scheme has one."""

    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None, challenge: str | None = None) -> None:
        super().__init__(message, code=code)
        self.challenge = challenge


class ForbiddenError(FaqbotError):
    """A request that proved who sent it, refused anyway (stale timestamp, a replay)."""

    code = "forbidden"


class MethodNotAllowedError(FaqbotError):
    code = "method_not_allowed"


class PayloadTooLargeError(FaqbotError):
    code = "payload_too_large"


class RateLimitedError(FaqbotError):
    """Over a client's rate limit: try again in `retry_after` seconds."""

    code = "rate_limited"


class RequestTimeoutError(UnavailableError):
    """No answer within the request timeout (the late result is dropped)."""

    code = "timeout"


HTTP_STATUS: dict[type[FaqbotError], int] = {
    BadRequestError: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    MethodNotAllowedError: 405,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    InvalidInputError: 422,
    RateLimitedError: 429,
    UnavailableError: 503,
}


def http_status(exc: FaqbotError) -> int:
    """The status of an error's kind (the nearest class in `HTTP_STATUS`); 500 for a kind with none."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def http_headers(exc: FaqbotError) -> dict[str, str]:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, UnauthorizedError) and exc.challenge:
        headers["WWW-Authenticate"] = exc.challenge
    return headers


def error_body(code: str, message: str, details: object | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"status": "error", "error": error}


def error_parts(exc: FaqbotError) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, JSON body) of one error; an error with no HTTP kind is an internal error."""
    status = http_status(exc)
    if status == 500:
        return 500, {}, error_body("internal_error", INTERNAL_MESSAGE)
    return status, http_headers(exc), error_body(exc.code, exc.message, exc.details)


def error_response(exc: FaqbotError) -> JSONResponse:
    status, headers, body = error_parts(exc)
    return JSONResponse(body, status_code=status, headers=headers or None)


def error_bytes(exc: FaqbotError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """`error_parts` as raw ASGI pieces: (status, headers, body bytes)."""
    status, headers, body = error_parts(exc)
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())]
    return status, raw, payload


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
    async def _faqbot_error(request: Request, exc: FaqbotError) -> JSONResponse:
        if http_status(exc) == 500:
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(exc)

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
        return JSONResponse(error_body("internal_error", INTERNAL_MESSAGE), status_code=500)
