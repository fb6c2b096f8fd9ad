"""What every channel shares: the verification errors, the timestamp window, the idempotent
path from a verified message to `FaqService.achat`, and background outbound delivery.

A delivery goes: verify signature (401) -> timestamp window (403) -> exact-replay check for
schemes that sign each delivery afresh (403) -> parse -> ignore what a bot should ignore ->
claim the event id (a repeat gets the first answer again, or an empty acknowledgement, and never
reaches the matcher) -> `FaqService.achat(text, channel=<platform>, session_id=<user id>)`, the
path /chat takes, with its policies (a database that refuses the turn still gets an answer out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import Request, Response
from pydantic import SecretStr

from bot.api import answer_label, chat_response
from bot.channels.events import EventLog
from bot.channels.sender import Sender
from bot.errors import BadRequestError, ForbiddenError, MethodNotAllowedError, UnauthorizedError
from bot.kbs import KnowledgeBases
from bot.metrics import Metrics
from bot.service import FaqService
from bot.settings import Settings
from index.text import sanitize

log = logging.getLogger("faqbot")

TEXT_ONLY_REPLY = "只支持文字消息，请直接输入您的问题。"
EMPTY_MESSAGE_REPLY = "您好，请直接输入您的问题。"
MAX_SESSION_ID_CHARS = 128


def bad_signature(message: str = "missing or invalid signature") -> UnauthorizedError:
    return UnauthorizedError(message, code="bad_signature")


def stale_timestamp(message: str = "timestamp outside the accepted window") -> ForbiddenError:
    return ForbiddenError(message, code="stale_timestamp")


def replayed_request() -> ForbiddenError:
    return ForbiddenError("this signed request was already received", code="replayed_request")


def bad_payload(message: str) -> BadRequestError:
    return BadRequestError(message, code="bad_payload")


def secret(value: SecretStr | None) -> str:
    """The value of a secret setting a channel needs (its `enabled()` made sure it is set)."""
    if value is None:
        raise RuntimeError("channel built without its secret settings")
    return value.get_secret_value()


def check_timestamp(value: str | None, max_age_seconds: float, *, milliseconds: bool = False) -> None:
    """Refuse a missing/garbled timestamp (401) or one outside now ± max_age (403, a stale or replayed request)."""
    if not value or not value.strip().isdigit():
        raise bad_signature("missing or malformed timestamp")
    seconds = int(value) / (1000 if milliseconds else 1)
    if abs(time.time() - seconds) > max_age_seconds:
        raise stale_timestamp()


@dataclass(frozen=True)
class Answer:
    """What the bot says to one message: Markdown `text` (answer, fallback or clarify list) and the /chat body."""

    text: str
    body: dict[str, Any] | None = None


@dataclass
class ChannelContext:
    settings: Settings
    service: FaqService
    metrics: Metrics
    events: EventLog
    sender: Sender
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    kbs: KnowledgeBases | None = None  # several KBs: FAQBOT_CHANNEL_KBS points a channel at one


class Channel(ABC):
    """One platform's webhook. Subclasses set `name` and `summary` and implement `enabled()` and `handle()`
    (and `verify_url()` when `url_verification` is set)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    url_verification: ClassVar[bool] = False  # True: also answers GET /webhooks/<name> (platform URL check)

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self.settings = context.settings

    @staticmethod
    @abstractmethod
    def enabled(settings: Settings) -> bool:
        """True when every secret the channel needs is set."""

    @abstractmethod
    async def handle(self, request: Request) -> Response:
        """Answer one platform delivery (`POST /webhooks/<name>`)."""

    async def verify_url(self, request: Request) -> Response:
        """The platform console's URL check (`GET /webhooks/<name>`); only routed when `url_verification`."""
        raise MethodNotAllowedError(f"{self.name} has no URL verification")

    # --- shared steps ------------------------------------------------------------------------------
    async def refuse_replay(self, signature: str) -> None:
        """For schemes that sign every delivery afresh: the same signature twice is a replay."""
        if not await self.context.events.claim_signature(self.name, signature):
            raise replayed_request()

    @property
    def service(self) -> FaqService:
        """The KB this channel answers from: FAQBOT_CHANNEL_KBS names one, else the first."""
        name = self.context.settings.channel_kbs.get(self.name)
        return self.context.kbs.get(name) if self.context.kbs is not None and name else self.context.service

    def require_ready(self) -> None:
        """503 before the index is loaded, so the platform retries instead of getting no answer."""
        self.service.require_ready()

    async def ask(self, text: str, *, session_id: str | None) -> Answer:
        """The same decision /chat makes (threshold, miss log with channel=<platform>)."""
        service = self.service
        if not sanitize(text):
            return Answer(EMPTY_MESSAGE_REPLY)
        self.require_ready()
        session = session_id[:MAX_SESSION_ID_CHARS] if session_id else None
        result = await service.achat(text, channel=self.name, session_id=session)
        body = chat_response(result, service)
        self.context.metrics.answers.labels(answer_label(result), self.name).inc()
        reply = str(body["answer"])
        if body.get("related"):
            reply += "\n\n相关问题：" + "".join(f"\n{i}. {r['question']}" for i, r in enumerate(body["related"], 1))
        if body.get("handoff_url"):
            reply += f"\n\n人工客服：{body['handoff_url']}"
        return Answer(reply, body)

    async def reply_once(self, event_id: str, produce: Callable[[], Awaitable[str]]) -> tuple[str | None, bool]:
        """Claim `event_id`, then `produce()` the rendered reply; returns (reply, is_new).

        A repeat of the event gets the reply the first delivery produced (None while that one is
        still being answered) without touching the matcher or the miss log: platforms that take the
        answer from the HTTP response retry when it was lost, and show one reply per message. If
        producing fails, the claim is released so the platform's next retry is answered.
        """
        claim = await self.context.events.claim(self.name, event_id)
        if not claim.new:
            log.info("%s: event %s already handled; not answering again", self.name, event_id)
            return claim.previous_reply, False
        try:
            rendered = await produce()
        except BaseException:
            await self.context.events.release(self.name, event_id)
            raise
        await self.context.events.remember_reply(self.name, event_id, rendered)
        return rendered, True

    async def claim_or_skip(self, event_id: str) -> bool:
        """For outbound channels: True if this event is new (a repeat is acknowledged and dropped)."""
        claim = await self.context.events.claim(self.name, event_id)
        if not claim.new:
            log.info("%s: event %s already handled; not answering again", self.name, event_id)
        return claim.new

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the webhook has answered (platforms want a fast acknowledgement)."""
        task = asyncio.get_running_loop().create_task(work)
        self.context.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.context.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s background reply failed: %r", self.name, task.exception())
