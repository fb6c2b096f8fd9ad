"""Slack Events API, reply with `chat.postMessage` in the message's thread.

Inbound: `POST /webhooks/slack`, `X-Slack-Signature = "v0=" + hex HMAC-SHA256(signing_secret,
"v0:" + X-Slack-Request-Timestamp + ":" + body)`, timestamp within 5 minutes; `url_verification`
answers the challenge. Answered: `app_mention` in channels and `message` in direct messages (so a
mention is not answered twice); bots (ourselves included), edits, joins and other subtypes are
ignored. The event is acknowledged at once and answered in the background; Slack's retries of
the same `event_id` are acknowledged without a second answer.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from bot.channels.base import (
    TEXT_ONLY_REPLY,
    Channel,
    ChannelContext,
    bad_payload,
    bad_signature,
    check_timestamp,
    secret,
)
from bot.channels.crypto import hmac_sha256, same
from bot.channels.sender import DeliveryError, check_http_status
from bot.channels.text import to_slack, truncate
from bot.settings import Settings

MAX_REPLY_CHARS = 3900  # Slack truncates messages past 4,000 characters
_USER_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_LINK = re.compile(r"<([^>|]+)\|([^>]*)>|<([^>]+)>")


def slack_text_to_question(text: str) -> str:
    """The question in a Slack message: mentions removed, links as their label, entities unescaped."""
    text = _USER_MENTION.sub(" ", text)
    text = _LINK.sub(lambda m: m.group(2) or m.group(1) or m.group(3), text)
    return html.unescape(text).strip()


class SlackChannel(Channel):
    name = "slack"
    summary = "Slack Events API: signed events in; answers with chat.postMessage in the thread."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.signing_secret = secret(self.settings.slack_signing_secret)
        self.bot_token = secret(self.settings.slack_bot_token)
        self.api_base = self.settings.slack_api_base.rstrip("/")

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.slack_signing_secret and settings.slack_bot_token)

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        timestamp = request.headers.get("x-slack-request-timestamp")
        signature = request.headers.get("x-slack-signature")
        if not timestamp or not signature:
            raise bad_signature("X-Slack-Request-Timestamp and X-Slack-Signature are required")
        expected = "v0=" + hmac_sha256(self.signing_secret, f"v0:{timestamp}:".encode() + raw).hex()
        if not same(expected, signature):
            raise bad_signature()
        check_timestamp(timestamp, self.settings.webhook_max_age_seconds)
        await self.refuse_replay(signature)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_payload("the body is not JSON") from exc
        if not isinstance(body, dict):
            raise bad_payload("the body must be a JSON object")
        if body.get("type") == "url_verification":
            return JSONResponse({"challenge": body.get("challenge", "")})
        event = body.get("event")
        if body.get("type") != "event_callback" or not isinstance(event, dict) or not body.get("event_id"):
            return JSONResponse({})
        for_us, question = self._question(body, event)
        if not for_us:
            return JSONResponse({})
        self.require_ready()
        event_id = str(body["event_id"])
        if await self.claim_or_skip(event_id):
            thread = str(event.get("thread_ts") or event.get("ts") or "")
            self.in_background(self._answer(event_id, str(event.get("channel")), thread,
                                            question, event.get("user")))
        return JSONResponse({})

    @staticmethod
    def _question(body: dict[str, Any], event: dict[str, Any]) -> tuple[bool, str | None]:
        """(is it for us, the question); the question is None for a direct file upload (answer: text only)."""
        bot_user = next((a.get("user_id") for a in body.get("authorizations") or [] if isinstance(a, dict)), None)
        user = event.get("user")
        if not user or event.get("bot_id") or event.get("bot_profile") or (bot_user and user == bot_user):
            return False, None
        subtype = event.get("subtype")
        kind = event.get("type")
        if kind == "app_mention" and not subtype:
            return True, slack_text_to_question(str(event.get("text", "")))
        if kind == "message" and event.get("channel_type") == "im":
            if subtype is None:
                return True, slack_text_to_question(str(event.get("text", "")))
            if subtype == "file_share" and not str(event.get("text", "")).strip():
                return True, None
        return False, None  # channel chatter without a mention, edits, deletions, joins, bot messages…

    async def _answer(self, event_id: str, channel: str, thread_ts: str, question: str | None,
                      user: str | None) -> None:
        url = f"{self.api_base}/chat.postMessage"
        sender = self.context.sender
        try:
            text = TEXT_ONLY_REPLY if question is None else (await self.ask(question, session_id=user)).text
        except Exception as exc:  # keep the question: an operator can answer it by hand
            await sender.dead_letter(platform=self.name, event_id=event_id, url=url,
                                     payload={"channel": channel, "question": question}, attempts=0,
                                     error=f"could not answer: {exc}")
            return
        payload: dict[str, object] = {"channel": channel, "text": truncate(to_slack(text), MAX_REPLY_CHARS)}
        if thread_ts:
            payload["thread_ts"] = thread_ts
        await sender.deliver(platform=self.name, event_id=event_id, url=url, payload=payload, auth=self._auth,
                             check=self._check)

    async def _auth(self, _: httpx.AsyncClient) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bot_token}"}

    @staticmethod
    def _check(response: httpx.Response) -> None:
        """Slack answers HTTP 200 with `{"ok": false, "error"}` for most failures."""
        check_http_status(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise DeliveryError("chat.postMessage: answer is not JSON", retryable=True) from exc
        if data.get("ok") is True:
            return
        error = str(data.get("error"))
        raise DeliveryError(f"chat.postMessage: {error}", retryable=error in ("ratelimited", "internal_error",
                                                                                 "fatal_error", "service_unavailable"))
