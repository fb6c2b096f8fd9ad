"""Structured logs: one JSON object per line, tagged with the id of the request it belongs to.

The request id is taken from the caller's `X-Request-ID` when it is a sane token (so nginx or a
client can correlate its own logs), otherwise generated; the middleware in `bot.limits` keeps it
in a context variable for the whole request (thread-pool calls inherit it) and sends it back in
the response's `X-Request-ID` header. Every log record of faqbot's loggers then carries it:

    {"ts": "2025-01-01T08:00:00.123Z", "level": "info", "logger": "faqbot.access",
     "message": "POST /chat 200", "request_id": "4f9c…", "method": "POST", "path": "/chat",
     "status": 200, "ms": 12.3, "client": "203.0.113.7"}
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("faqbot_request_id", default=None)

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HANDLER_NAME = "faqbot-structured"
# Attributes every LogRecord has; anything else passed with `extra=` becomes a JSON field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "request_id", "taskName",
}


def request_id_from(header_value: str | None) -> str:
    """The caller's request id if it is a plain token (no injection into logs), else a new one."""
    if header_value and _SANE_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Put the current request id on every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON; `extra=` fields are kept, exceptions go in `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "ts": f"{created}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Give the `faqbot` loggers one stderr handler in the chosen format (idempotent: re-running replaces it).

    Only faqbot's own logger tree is touched (records still propagate, so pytest's caplog and any
    root handler an operator set up keep working); uvicorn keeps its own configuration.
    """
    logger = logging.getLogger("faqbot")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
