"""WeCom (企业微信) app callbacks, and the XML + WXBizMsgCrypt machinery WeChat shares.

Inbound: `POST /webhooks/wecom?msg_signature=&timestamp=&nonce=` with `<xml><Encrypt>…</Encrypt></xml>`;
the signature is sha1 of the sorted token/timestamp/nonce/Encrypt, the decrypted message must carry
our CorpID. Reply: the passive-reply XML, encrypted and signed, in the HTTP response (empty body =
nothing to say). URL check: `GET ?msg_signature=&timestamp=&nonce=&echostr=` answers the decrypted echostr.
"""

from __future__ import annotations

import secrets
import time
import xml.etree.ElementTree as ET

from fastapi import Request, Response

from bot.channels.base import (
    TEXT_ONLY_REPLY,
    Channel,
    ChannelContext,
    bad_payload,
    bad_signature,
    check_timestamp,
    secret,
)
from bot.channels.crypto import CryptoError, WXBizMsgCrypt
from bot.channels.text import to_plain, truncate
from bot.settings import Settings

# WeCom and WeChat text messages hold at most 2048 bytes.
MAX_REPLY_BYTES = 2048


def parse_xml(raw: bytes | str) -> dict[str, str]:
    """The child elements of a flat platform XML document (no DTDs: no entity expansion tricks)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise bad_payload("XML with a DTD is not accepted")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise bad_payload(f"not XML: {exc}") from exc
    return {child.tag: (child.text or "").strip() for child in root}


def cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply_xml(*, to_user: str, from_user: str, content: str) -> str:
    """The passive-reply text message (before encryption)."""
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType>{cdata('text')}</MsgType>"
            f"<Content>{cdata(content)}</Content></xml>")


class WeixinChannel(Channel):
    """WeCom and WeChat Official Account share the crypto, the XML and the passive reply."""

    url_verification = True
    crypt: WXBizMsgCrypt

    def render(self, markdown: str) -> str:
        return truncate(to_plain(markdown), MAX_REPLY_BYTES, utf8_bytes=True)

    def encrypted_response(self, plain_xml: str) -> Response:
        encrypted = self.crypt.encrypt(plain_xml)
        timestamp = str(int(time.time()))
        nonce = str(secrets.randbelow(10**10))
        signature = self.crypt.signature(timestamp, nonce, encrypted)
        body = (f"<xml><Encrypt>{cdata(encrypted)}</Encrypt><MsgSignature>{cdata(signature)}</MsgSignature>"
                f"<TimeStamp>{timestamp}</TimeStamp><Nonce>{cdata(nonce)}</Nonce></xml>")
        return Response(body, media_type="application/xml")

    @staticmethod
    def nothing_to_say() -> Response:
        """An empty 200: the platform shows nothing and does not retry."""
        return Response("", media_type="text/plain")

    def decrypt_verified(self, signature: str | None, timestamp: str | None, nonce: str | None,
                         encrypted: str | None) -> str:
        """Check signature, timestamp window and receive id; the decrypted message."""
        if not (signature and timestamp and nonce and encrypted):
            raise bad_signature("msg_signature, timestamp, nonce and an encrypted message are required (safe mode)")
        if not self.crypt.verify(signature, timestamp, nonce, encrypted):
            raise bad_signature()
        check_timestamp(timestamp, self.settings.webhook_max_age_seconds)
        try:
            return self.crypt.decrypt(encrypted)
        except CryptoError as exc:
            raise bad_signature(f"cannot decrypt the message: {exc}") from exc

    async def verify_url(self, request: Request) -> Response:
        query = request.query_params
        plain = self.decrypt_verified(query.get("msg_signature"), query.get("timestamp"), query.get("nonce"),
                                      query.get("echostr"))
        return Response(plain, media_type="text/plain")

    async def handle(self, request: Request) -> Response:
        query = request.query_params
        outer = parse_xml(await request.body())
        inner = parse_xml(self.decrypt_verified(query.get("msg_signature"), query.get("timestamp"),
                                                query.get("nonce"), outer.get("Encrypt")))
        return await self.respond(inner)

    async def respond(self, message: dict[str, str]) -> Response:
        """Answer a decrypted message: text goes to the matcher, other kinds get a polite note, events nothing."""
        kind = message.get("MsgType", "")
        user = message.get("FromUserName", "")
        us = message.get("ToUserName", "")
        msg_id = message.get("MsgId")
        if kind == "event" or not msg_id or not user:
            return self.nothing_to_say()  # subscribe, enter_agent, menu clicks…: no answer expected
        if kind == "text":
            text = message.get("Content", "")

            async def produce() -> str:
                return self.render((await self.ask(text, session_id=user)).text)
        else:
            async def produce() -> str:
                return TEXT_ONLY_REPLY

        reply, _ = await self.reply_once(msg_id, produce)
        if reply is None:
            return self.nothing_to_say()
        return self.encrypted_response(text_reply_xml(to_user=user, from_user=us, content=reply))


class WeComChannel(WeixinChannel):
    name = "wecom"
    summary = "WeCom (企业微信) app callback: encrypted XML in, encrypted passive reply out."

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        settings = self.settings
        self.crypt = WXBizMsgCrypt(secret(settings.wecom_token), secret(settings.wecom_aes_key),
                                   settings.wecom_corp_id or "")

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.wecom_token and settings.wecom_aes_key and settings.wecom_corp_id)
