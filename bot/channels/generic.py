"""The generic signed webhook, for any system that can compute an HMAC (a helpdesk, an IM bridge).

Inbound: `POST /webhooks/generic`, JSON `{"message", "session_id"?, "event_id"?}`, headers
`X-Faqbot-Timestamp` (unix seconds) and `X-Faqbot-Signature` = hex HMAC-SHA256(secret,
timestamp + "." + raw body), accepted within `webhook_max_age_seconds`; the same signature twice is
a replay (403), so a caller re-signs its retries, and an `event_id` seen before is answered from the
first answer (`"duplicate": true`) without a second miss. Reply: the /chat JSON plus `"reply"`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from bot.api import require_text
from bot.channels.base import Channel, ChannelContext, bad_payload, bad_signature, check_timestamp, secret
from bot.channels.crypto import hmac_sha256, same
from bot.settings import Settings
from faq.errors import ConflictError, InvalidInputError

MAX_ID_CHARS = 128


class GenericChannel(Channel):
    name = "generic"
    summary = "Generic signed webhook: HMAC-SHA256 over timestamp.body; answers with the /chat JSON plus `reply`."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.secret = secret(self.settings.webhook_secret)

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.webhook_secret is not None

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        timestamp = request.headers.get("x-faqbot-timestamp")
        signature = request.headers.get("x-faqbot-signature", "").strip().lower()
        if not timestamp or not signature:
            raise bad_signature("X-Faqbot-Timestamp and X-Faqbot-Signature are required")
        expected = hmac_sha256(self.secret, timestamp.encode() + b"." + raw).hex()
        if not same(expected, signature):
            raise bad_signature()
        check_timestamp(timestamp, self.settings.webhook_max_age_seconds)
        await self.refuse_replay(signature)
        message, session_id, event_id = self._parse(raw)
        self.require_ready()

        async def produce() -> str:
            answer = await self.ask(message, session_id=session_id)
            return json.dumps({"reply": answer.text, **(answer.body or {})}, ensure_ascii=False)

        if event_id is None:
            return JSONResponse(json.loads(await produce()))
        reply, new = await self.reply_once(event_id, produce)
        if reply is None:
            raise ConflictError("this event_id is still being answered; retry shortly", code="in_progress",
                                retry_after=1)
        return JSONResponse({**json.loads(reply), "duplicate": not new})

    def _parse(self, raw: bytes) -> tuple[str, str | None, str | None]:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_payload("the body is not JSON") from exc
        if not isinstance(body, dict):
            raise bad_payload("the body must be a JSON object")
        message = body.get("message")
        if not isinstance(message, str):
            raise InvalidInputError("message: a string is required")
        require_text(message, "message", self.settings.max_message_chars)
        return message, self._optional_id(body, "session_id"), self._optional_id(body, "event_id")

    @staticmethod
    def _optional_id(body: dict[str, Any], field: str) -> str | None:
        value = body.get(field)
        if value is None:
            return None
        if not isinstance(value, str | int) or isinstance(value, bool) or not str(value) or len(str(value)) > MAX_ID_CHARS:
            raise InvalidInputError(f"{field}: a string of 1-{MAX_ID_CHARS} characters")
        return str(value)
