"""Feishu / Lark event subscription (事件订阅), reply through the Open API.

Inbound: `POST /webhooks/feishu` with `{"encrypt": base64(iv + AES-256-CBC(sha256(encrypt_key)))}`,
signed `X-Lark-Signature = sha256(X-Lark-Request-Timestamp + X-Lark-Request-Nonce + encrypt_key + body)`;
the decrypted event must carry our Verification Token (and App ID). The URL check
(`type: url_verification`) answers `{"challenge"}`. Messages (`im.message.receive_v1`) are
acknowledged at once; the answer is sent in the background as a reply to the message
(`POST /open-apis/im/v1/messages/{message_id}/reply`, tenant_access_token from the App ID/Secret).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
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
from bot.channels.crypto import CryptoError, feishu_decrypt, feishu_signature, same
from bot.channels.sender import DeliveryError, check_http_status
from bot.channels.text import to_plain, truncate
from bot.settings import Settings

MAX_REPLY_CHARS = 10_000
TOKEN_ERROR_CODES = {99991661, 99991663, 99991668}  # missing / invalid / expired access token
_MENTION_KEY = re.compile(r"@_user_\d+")


class FeishuChannel(Channel):
    name = "feishu"
    summary = "Feishu/Lark event subscription: encrypted, signed events in; replies through the Open API."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        settings = self.settings
        self.verification_token = secret(settings.feishu_verification_token)
        self.encrypt_key = secret(settings.feishu_encrypt_key)
        self.app_id = settings.feishu_app_id or ""
        self.app_secret = secret(settings.feishu_app_secret)
        self.api_base = settings.feishu_api_base.rstrip("/")
        self._token: tuple[str, float] | None = None  # (tenant_access_token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.feishu_verification_token and settings.feishu_encrypt_key and settings.feishu_app_id
                    and settings.feishu_app_secret)

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        timestamp = request.headers.get("x-lark-request-timestamp")
        nonce = request.headers.get("x-lark-request-nonce")
        signature = request.headers.get("x-lark-signature")
        if signature is not None and not (
            timestamp and nonce and same(feishu_signature(timestamp, nonce, self.encrypt_key, raw), signature)
        ):
            raise bad_signature()
        event = self._decrypt(raw)
        if event.get("type") == "url_verification":
            # The console's URL check may come unsigned; it must still be encrypted with our key and carry our token.
            if not same(str(event.get("token", "")), self.verification_token):
                raise bad_signature("wrong verification token")
            return JSONResponse({"challenge": event.get("challenge", "")})
        if signature is None:
            raise bad_signature("X-Lark-Signature is required")
        check_timestamp(timestamp, self.settings.webhook_max_age_seconds)
        await self.refuse_replay(signature)
        header = event.get("header")
        if not isinstance(header, dict) or not header.get("event_id"):
            raise bad_payload("only schema 2.0 events are supported")
        if not same(str(header.get("token", "")), self.verification_token):
            raise bad_signature("wrong verification token")
        if header.get("app_id") and header["app_id"] != self.app_id:
            raise bad_signature("event for another app")
        if header.get("event_type") != "im.message.receive_v1":
            return JSONResponse({})
        body = event.get("event") or {}
        sender, message = body.get("sender") or {}, body.get("message") or {}
        if sender.get("sender_type") != "user" or not message.get("message_id"):
            return JSONResponse({})  # bots and apps (including ourselves)
        in_group = message.get("chat_type") != "p2p"
        if in_group and not message.get("mentions"):
            return JSONResponse({})  # a group message that does not @ the bot is not for us
        if message.get("message_type") == "text":
            question = self._text(message)
        elif in_group:
            return JSONResponse({})
        else:
            question = None
        self.require_ready()
        if await self.claim_or_skip(str(header["event_id"])):
            user = (sender.get("sender_id") or {}).get("open_id")
            self.in_background(self._answer(str(header["event_id"]), str(message["message_id"]), question, user))
        return JSONResponse({})

    def _decrypt(self, raw: bytes) -> dict[str, Any]:
        try:
            outer = json.loads(raw)
        except ValueError as exc:
            raise bad_payload("the body is not JSON") from exc
        encrypted = outer.get("encrypt") if isinstance(outer, dict) else None
        if not isinstance(encrypted, str):
            raise bad_signature("encrypted events expected (an Encrypt Key is configured)")
        try:
            event = json.loads(feishu_decrypt(self.encrypt_key, encrypted))
        except (CryptoError, ValueError) as exc:
            raise bad_signature(f"cannot decrypt the event: {exc}") from exc
        if not isinstance(event, dict):
            raise bad_payload("the event is not a JSON object")
        return event

    @staticmethod
    def _text(message: dict[str, Any]) -> str:
        try:
            text = str(json.loads(message.get("content") or "{}").get("text", ""))
        except (ValueError, AttributeError):
            return ""
        return _MENTION_KEY.sub("", text).strip()

    async def _answer(self, event_id: str, message_id: str, question: str | None, user: str | None) -> None:
        url = f"{self.api_base}/open-apis/im/v1/messages/{message_id}/reply"
        sender = self.context.sender
        try:
            text = TEXT_ONLY_REPLY if question is None else (await self.ask(question, session_id=user)).text
        except Exception as exc:  # keep the question: an operator can answer it by hand
            await sender.dead_letter(platform=self.name, event_id=event_id, url=url,
                                     payload={"question": question}, attempts=0, error=f"could not answer: {exc}")
            return
        payload = {"msg_type": "text", "content": json.dumps({"text": truncate(to_plain(text), MAX_REPLY_CHARS)},
                                                              ensure_ascii=False)}
        await sender.deliver(platform=self.name, event_id=event_id, url=url, payload=payload, auth=self._auth,
                             check=self._check)

    async def _auth(self, client: httpx.AsyncClient) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._tenant_token(client)}"}

    async def _tenant_token(self, client: httpx.AsyncClient) -> str:
        """A cached tenant_access_token, renewed a minute before it expires."""
        async with self._token_lock:
            if self._token and self._token[1] > time.monotonic():
                return self._token[0]
            url = f"{self.api_base}/open-apis/auth/v3/tenant_access_token/internal"
            response = await client.post(url, json={"app_id": self.app_id, "app_secret": self.app_secret})
            if response.status_code == 429 or response.status_code >= 500:
                raise DeliveryError(f"token: HTTP {response.status_code}", retryable=True)
            try:
                data = response.json()
            except ValueError as exc:
                raise DeliveryError(f"token: HTTP {response.status_code}, not JSON", retryable=True) from exc
            if data.get("code") != 0 or not data.get("tenant_access_token"):
                raise DeliveryError(f"token: code {data.get('code')}: {data.get('msg')}", retryable=False)
            expires_in = float(data.get("expire") or 7200)
            self._token = (str(data["tenant_access_token"]), time.monotonic() + max(expires_in - 60, 0))
            return self._token[0]

    def _check(self, response: httpx.Response) -> None:
        """Feishu answers errors as JSON `code` (an expired token comes back as HTTP 400 with code 99991663)."""
        if response.status_code == 429 or response.status_code >= 500:
            check_http_status(response)
        try:
            data = response.json()
        except ValueError:
            check_http_status(response)
            raise DeliveryError("reply: answer is not JSON", retryable=True) from None
        code = data.get("code")
        if code == 0:
            check_http_status(response)
            return
        if code in TOKEN_ERROR_CODES:
            self._token = None
            raise DeliveryError(f"reply: access token rejected ({code})", retryable=True)
        raise DeliveryError(f"reply: code {code}: {data.get('msg')}", retryable=False)
