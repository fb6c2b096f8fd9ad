"""DingTalk (钉钉) enterprise internal robot, outgoing mode (企业内部机器人 HTTP 回调).

Inbound: `POST /webhooks/dingtalk`, headers `timestamp` (ms) and
`sign = base64(HMAC-SHA256(app_secret, timestamp + "\\n" + app_secret))`, accepted within one hour
as DingTalk documents. The sign does not cover the body, so a sign is accepted once: the same
timestamp/sign pair again is refused as a replay. Reply: a DingTalk message (markdown) as the JSON response.
"""

from __future__ import annotations

import base64
import json
from typing import Any

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
from bot.channels.text import title_of, to_dingtalk, truncate
from bot.settings import Settings

SIGN_WINDOW_SECONDS = 3600
MAX_REPLY_CHARS = 5000


def markdown_message(markdown: str) -> dict[str, Any]:
    return {"msgtype": "markdown",
            "markdown": {"title": title_of(markdown), "text": truncate(to_dingtalk(markdown), MAX_REPLY_CHARS)}}


class DingTalkChannel(Channel):
    name = "dingtalk"
    summary = "DingTalk (钉钉) internal robot outgoing callback: signed JSON in, a markdown message in the response."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.app_secret = secret(self.settings.dingtalk_app_secret)

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.dingtalk_app_secret is not None

    def expected_sign(self, timestamp: str) -> str:
        return base64.b64encode(hmac_sha256(self.app_secret, f"{timestamp}\n{self.app_secret}")).decode()

    async def handle(self, request: Request) -> Response:
        timestamp, sign = request.headers.get("timestamp"), request.headers.get("sign")
        if not timestamp or not sign or not same(self.expected_sign(timestamp), sign):
            raise bad_signature()
        check_timestamp(timestamp, SIGN_WINDOW_SECONDS, milliseconds=True)
        await self.refuse_replay(f"{timestamp}:{sign}")
        try:
            event = json.loads(await request.body())
        except ValueError as exc:
            raise bad_payload("the body is not JSON") from exc
        if not isinstance(event, dict) or not event.get("msgId"):
            raise bad_payload("not a DingTalk robot message (no msgId)")
        if event.get("conversationType") == "2" and not event.get("isInAtList", False):
            return JSONResponse({})  # a group message that does not @ the robot is not for us
        user = event.get("senderStaffId") or event.get("senderId")
        if event.get("msgtype") == "text":
            text = str((event.get("text") or {}).get("content", ""))

            async def produce() -> str:
                return json.dumps(markdown_message((await self.ask(text, session_id=user)).text), ensure_ascii=False)
        else:
            async def produce() -> str:
                return json.dumps({"msgtype": "text", "text": {"content": TEXT_ONLY_REPLY}}, ensure_ascii=False)

        reply, _ = await self.reply_once(str(event["msgId"]), produce)
        return JSONResponse(json.loads(reply) if reply else {})
