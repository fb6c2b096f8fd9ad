"""What keeps a public endpoint standing: body cap, per-client rate limits, a request timeout, and
one request id, log line and metric per request.

One pure-ASGI middleware does it all, in this order, before any route code runs:

    request id (X-Request-ID in, or new; always sent back)
    -> body cap: a declared Content-Length over `max_body_bytes`, or a streamed body growing past
       it, is refused with 413 before the route reads anything; the rest of the body is then read
       and dropped within bounds before the connection closes (`drain_body`: a lingering close, so
       a client that sends its whole body before reading gets the 413, not a reset); a JSON body
       nesting deeper than 64 levels is refused with 400 `json_too_deep` (recursion bombs never
       reach a parser)
    -> rate limits (token buckets; `bot.shared_state`: Redis when configured, else in-process):
         /chat, /feedback           per client: its `session_id`, else its IP
         /similarity, /v1/embeddings per IP
         /webhooks/...              per sending IP
       plus one ceiling per IP over all of them (session ids are chosen by the client, so rotating
       them cannot lift the limit). A refusal is 429 with `Retry-After` and the JSON error body.
    -> timeout: a public API request not answered within `request_timeout_seconds` gets 503
       `timeout` (the late result is dropped), so one slow call cannot hold a client forever;
       the encoder queue itself is bounded (503 `overloaded` when full, bot/batcher.py)
    -> the app; an exception that escapes it becomes the JSON 500 (with the request id logged)
    -> metrics (requests by route and status, latency) and one JSON access-log line.

The client IP is the socket peer, or the `X-Forwarded-For` address when uvicorn trusts the proxy
(`--forwarded-allow-ips`, default 127.0.0.1: nginx on the same host), see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from bot.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    error_bytes,
)
from bot.logging_setup import request_id_from, request_id_var
from bot.metrics import Metrics
from bot.settings import Settings
from bot.shared_state import BucketSpec, SharedState
from faq.errors import FaqbotError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("faqbot.access")
log = logging.getLogger("faqbot")

MAX_SESSION_KEY_CHARS = 128
MAX_JSON_DEPTH = 64  # no faqbot body nests deeper than ~4; deeper ones only exist to exhaust recursion
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# How much of a refused body is read and dropped before closing (see drain_body): enough for the
# uploads a real client sends by mistake, little enough that a huge or stalled one cannot hold a connection.
DRAIN_MAX_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 2.0
CHAT_ROUTES = frozenset({"/chat", "/feedback"})
SIMILARITY_ROUTES = frozenset({"/similarity", "/v1/embeddings"})
WEBHOOK_PREFIX = "/webhooks/"


@dataclass(frozen=True)
class Limits:
    """The limits of one app, from its settings (an explicit value object, not read from globals)."""

    enabled: bool
    chat: BucketSpec
    similarity: BucketSpec
    webhook: BucketSpec
    per_ip: BucketSpec
    max_body_bytes: int
    timeout_seconds: float
    exempt_ips: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        def per_minute(rate: float, burst: int) -> BucketSpec:
            return BucketSpec(rate / 60.0, burst)

        return cls(
            enabled=settings.rate_limit_enabled,
            chat=per_minute(settings.rate_limit_chat_per_minute, settings.rate_limit_chat_burst),
            similarity=per_minute(settings.rate_limit_similarity_per_minute, settings.rate_limit_similarity_burst),
            webhook=per_minute(settings.rate_limit_webhook_per_minute, settings.rate_limit_webhook_burst),
            per_ip=per_minute(settings.rate_limit_ip_per_minute, settings.rate_limit_ip_burst),
            max_body_bytes=settings.max_body_bytes,
            timeout_seconds=settings.request_timeout_seconds,
            exempt_ips=frozenset(settings.rate_limit_exempt_ips),
        )


def route_family(path: str) -> str | None:
    """Which limited family a path belongs to (None: not limited, e.g. pages, health, admin)."""
    if path in CHAT_ROUTES:
        return "chat"
    if path in SIMILARITY_ROUTES:
        return "similarity"
    if path.startswith(WEBHOOK_PREFIX):
        return "webhook"
    return None


def session_from_body(body: bytes) -> str | None:
    """The `session_id` of a /chat or /feedback body, if it is a usable one (bad JSON: None, the route says why)."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    session = data.get("session_id") if isinstance(data, dict) else None
    if isinstance(session, str) and 0 < len(session) <= MAX_SESSION_KEY_CHARS:
        return session
    return None


def json_depth(body: bytes) -> int:
    """How deep a JSON text nests (strings skipped); linear, and the loop only sees the brackets."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class ProtectionMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, limits: Limits, shared: SharedState, metrics: Metrics) -> None:
        self.app = app
        self.limits = limits
        self.shared = shared
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = request_id_from(headers.get("x-request-id"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": None, "route": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, headers, state)
        finally:
            self._record(scope, state, time.perf_counter() - started, request_id)
            request_id_var.reset(token)

    # --- the steps -------------------------------------------------------------------------------
    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                      state: dict[str, Any]) -> None:
        limits = self.limits
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        family = route_family(path) if method != "OPTIONS" else None
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            state["route"] = self._label(path, family)
            # A client waiting for `100 Continue` has sent no body yet, and the 413 tells it not to: nothing to drain.
            waiting = headers.get("expect", "").lower() == "100-continue"
            await self._refuse_unread_body(receive, send, PayloadTooLargeError(
                f"request body over {limits.max_body_bytes} bytes"), drain=not waiting)
            return
        has_body = method in ("POST", "PUT", "PATCH") and (length is None or length != "0")
        body: bytes | None = None
        if has_body:
            body, ended = await self._read_body(receive, limits.max_body_bytes)
            if body is None:
                state["route"] = self._label(path, family)
                await self._refuse_unread_body(receive, send, PayloadTooLargeError(
                    f"request body over {limits.max_body_bytes} bytes"), drain=not ended)
                return
            receive = _replay(body, receive)
            if body.lstrip()[:1] in (b"{", b"[") and json_depth(body) > MAX_JSON_DEPTH:
                state["route"] = self._label(path, family)
                await self._refuse(send, BadRequestError(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
                                                         code="json_too_deep"))
                return
        if family is not None and limits.enabled:
            wait = self._take_tokens(scope, family, body)
            if wait > 0:
                state["route"] = self._label(path, family)
                self.metrics.rate_limited.labels(family).inc()
                retry_after = max(1, math.ceil(wait))
                await self._refuse(send, RateLimitedError(f"too many requests; retry in {retry_after} s",
                                                          retry_after=retry_after))
                return
        try:
            if family is not None:
                await self._with_timeout(scope, receive, send, state, family)
            else:
                await self.app(scope, receive, send)
        except Exception:  # the app let an error escape: one JSON 500, logged with the request id
            log.exception("unhandled error on %s %s", method, path)
            if state["status"] is None:
                await self._refuse(send, FaqbotError("unhandled error"))  # no HTTP kind: the 500 body

    def _take_tokens(self, scope: Scope, family: str, body: bytes | None) -> float:
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        limits = self.limits
        if ip in limits.exempt_ips:
            return 0.0
        wait = self.shared.take(f"ip:{ip}", limits.per_ip)
        if wait > 0:
            return wait
        if family == "chat":
            session = session_from_body(body or b"")
            key = f"chat:s:{session}" if session is not None else f"chat:ip:{ip}"
            return self.shared.take(key, limits.chat)
        spec = limits.similarity if family == "similarity" else limits.webhook
        return self.shared.take(f"{family}:ip:{ip}", spec)

    async def _with_timeout(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any],
                            family: str) -> None:
        timed_out = False

        async def guarded_send(message: Message) -> None:
            if not timed_out:  # after a 503 went out, the late answer has nowhere to go
                await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.limits.timeout_seconds)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            task.result()
            return
        if state["status"] is not None:  # already answering (streaming): let it finish
            await task
            return
        timed_out = True
        task.cancel()
        task.add_done_callback(_consume_result)
        self.metrics.timeouts.labels(family).inc()
        await self._refuse(send, RequestTimeoutError(f"no answer within {self.limits.timeout_seconds:g} s; try again"))

    @staticmethod
    async def _read_body(receive: Receive, cap: int) -> tuple[bytes | None, bool]:
        """(the body, None once past `cap`; whether it ended): a body that ended has nothing left to drain,
        and one more `receive()` would wait for bytes that never come."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            ended = not message.get("more_body", False)
            size += len(chunk)
            if size > cap:
                return None, ended
            chunks.append(chunk)
            if ended:
                return b"".join(chunks), True

    @staticmethod
    async def _refuse(send: Send, error: FaqbotError) -> None:
        """Answer with `error` before the app runs (bot.errors decides its status, headers and body)."""
        status, headers, body = error_bytes(error)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _refuse_unread_body(receive: Receive, send: Send, error: PayloadTooLargeError, *, drain: bool) -> None:
        """The 413 of a body left unread: the answer at once, then the rest of the body drained, then the close.

        The whole answer goes out first, as nginx's lingering close does, for a client that reads while it
        sends; the response ends (and uvicorn closes, `connection: close`) only once the drain is over.
        """
        status, headers, body = error_bytes(error)
        await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        if drain:
            await drain_body(receive)
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _label(path: str, family: str | None) -> str:
        if family == "webhook":
            return "/webhooks/{platform}"
        return path if family is not None else "unmatched"

    def _record(self, scope: Scope, state: dict[str, Any], seconds: float, request_id: str) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or state["route"] or "unmatched"
        status = state["status"] or 500
        self.metrics.requests.labels(label, str(status)).inc()
        self.metrics.latency.labels(label).observe(seconds)
        client = scope.get("client")
        access_log.info("%s %s %s", scope.get("method"), scope.get("path"), status, extra={
            "method": scope.get("method"), "path": scope.get("path"), "route": label, "status": status,
            "ms": round(seconds * 1000, 2), "client": client[0] if client else None, "request_id": request_id,
        })


async def drain_body(receive: Receive, *, max_bytes: int = DRAIN_MAX_BYTES, seconds: float = DRAIN_SECONDS) -> bool:
    """Read and drop what is left of a refused request body, within bounds; True if it was all read.

    A socket closed with unread bytes in it makes the kernel send a reset, and a client that writes
    its whole body before reading (urllib, many SDKs) then gets ECONNRESET instead of the 413. Past
    `max_bytes` or `seconds` (a huge or stalled body) the connection is closed anyway. Nothing is kept.
    """
    drained = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while drained <= max_bytes:
                message = await receive()
                if message["type"] != "http.request":  # the client left
                    return True
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _consume_result(task: asyncio.Task[Any]) -> None:
    """Retrieve a timed-out request's late outcome so asyncio does not log 'exception never retrieved'."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
