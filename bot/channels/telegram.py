"""Telegram bot webhook.

Inbound: `POST /webhooks/telegram` with an Update; Telegram proves itself with the header
`X-Telegram-Bot-Api-Secret-Token` equal to the `secret_token` given to setWebhook. Updates are
deduplicated by `update_id`; a message older than the event TTL (which dedupe can no longer
recognise) is refused as stale. Reply: the Bot API method in the webhook response
(`{"method": "sendMessage", "chat_id", "text"}`), plain text.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from bot.channels.base import (
    TEXT_ONLY_REPLY,
    Channel,
    ChannelContext,
    bad_payload,
    bad_signature,
    secret,
    stale_timestamp,
)
from bot.channels.crypto import same
from bot.channels.text import to_plain, truncate
from bot.settings import Settings

MAX_MESSAGE_CHARS = 4096
GROUP_CHATS = ("group", "supergroup")


def _utf16_slice_out(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` without the (offset, length) spans, which Telegram counts in UTF-16 code units."""
    units = text.encode("utf-16-le")
    for offset, length in sorted(spans, reverse=True):
        units = units[: 2 * offset] + units[2 * (offset + length):]
    return units.decode("utf-16-le", "ignore")


class TelegramChannel(Channel):
    name = "telegram"
    summary = "Telegram bot webhook: Update in, sendMessage in the response."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.secret_token = secret(self.settings.telegram_secret_token)
        bot_token = self.settings.telegram_bot_token
        # A bot token is "<bot id>:<key>": the id recognises replies to the bot's own messages in groups.
        prefix = bot_token.get_secret_value().split(":", 1)[0] if bot_token else ""
        self.bot_id = int(prefix) if prefix.isdigit() else None

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.telegram_secret_token is not None

    async def handle(self, request: Request) -> Response:
        given = request.headers.get("x-telegram-bot-api-secret-token")
        if not given or not same(given, self.secret_token):
            raise bad_signature("missing or wrong X-Telegram-Bot-Api-Secret-Token")
        try:
            update = json.loads(await request.body())
        except ValueError as exc:
            raise bad_payload("the body is not JSON") from exc
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            raise bad_payload("not a Telegram Update (no update_id)")
        message = update.get("message")
        if not isinstance(message, dict):
            return JSONResponse({})  # edits, channel posts, member changes, button presses: nothing to answer
        date = message.get("date")
        if isinstance(date, int) and time.time() - date > self.context.events.ttl_seconds:
            raise stale_timestamp("message older than the event retention window")
        sender = message.get("from") or {}
        chat = message.get("chat") or {}
        if sender.get("is_bot") or "id" not in chat:
            return JSONResponse({})
        in_group = chat.get("type") in GROUP_CHATS
        text = message.get("text")
        if in_group and not self._addressed(message):
            return JSONResponse({})
        if text is None:
            if in_group:
                return JSONResponse({})

            async def produce() -> str:
                return TEXT_ONLY_REPLY
        else:
            question = self._question(message)

            async def produce() -> str:
                answer = await self.ask(question, session_id=str(sender.get("id") or chat["id"]))
                return truncate(to_plain(answer.text), MAX_MESSAGE_CHARS)

        reply, _ = await self.reply_once(str(update["update_id"]), produce)
        if reply is None:
            return JSONResponse({})
        method: dict[str, Any] = {"method": "sendMessage", "chat_id": chat["id"], "text": reply}
        if in_group and isinstance(message.get("message_id"), int):
            method["reply_parameters"] = {"message_id": message["message_id"]}
        return JSONResponse(method)

    def _addressed(self, message: dict[str, Any]) -> bool:
        """In groups, answer only a /command, an @mention, or a reply to one of the bot's messages."""
        entities = message.get("entities") or []
        if any(e.get("type") in ("bot_command", "mention", "text_mention") for e in entities if isinstance(e, dict)):
            return True
        replied = (message.get("reply_to_message") or {}).get("from") or {}
        return self.bot_id is not None and replied.get("id") == self.bot_id

    @staticmethod
    def _question(message: dict[str, Any]) -> str:
        """The text without the command (/start, /ask@bot) and @mentions addressing the bot."""
        text = str(message.get("text") or "")
        spans = [(int(e["offset"]), int(e["length"])) for e in message.get("entities") or []
                 if isinstance(e, dict) and e.get("type") in ("bot_command", "mention")
                 and isinstance(e.get("offset"), int) and isinstance(e.get("length"), int)]
        return _utf16_slice_out(text, spans).strip()
