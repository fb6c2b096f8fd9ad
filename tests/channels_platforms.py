"""Test side of the channel tests: each platform's request built from its documentation, a fake
platform API server, and a faqbot server with every channel switched on.

The signing and encryption here are written from the platforms' documents, independently of
bot/channels/crypto.py (only the AES block primitive and PKCS#7 padder come from `cryptography`),
so a bug in faqbot's own scheme shows up as a rejected request instead of being mirrored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from tests.conftest import TINY_KB, ThreadServer, serve_app

MATCHED_QUESTION = "可以开票吗"
INVOICE_ANSWER = "支持。下单后在“我的订单”中申请电子发票即可。"
UNKNOWN_QUESTION = "火星上的天气适合养金鱼吗"  # nothing in the tiny KB: a miss
CHAT_LOG_SETTLE_SECONDS = 0.25  # > the default `log_flush_ms` (50 ms) of the batched chat-log writer

WECOM_TOKEN = "wecomToken2024"
WECOM_AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")
WECOM_CORP_ID = "ww0123456789abcdef"
WECHAT_TOKEN = "wechatToken2024"
WECHAT_AES_KEY = base64.b64encode(bytes(range(100, 132))).decode().rstrip("=")
WECHAT_APP_ID = "wx0123456789abcdef"
DINGTALK_SECRET = "dingAppSecret-0123456789"
FEISHU_TOKEN = "feishuVerificationToken"
FEISHU_ENCRYPT_KEY = "feishuEncryptKey2024"
FEISHU_APP_ID = "cli_a1b2c3d4e5"
FEISHU_APP_SECRET = "feishuAppSecret"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_BOT_TOKEN = "xoxb-test-token"
SLACK_BOT_USER = "UBOT0001"
TELEGRAM_SECRET = "tg-secret_token-123"
TELEGRAM_BOT_TOKEN = "7777777:AAHtestbottoken"
GENERIC_SECRET = "generic-webhook-secret-0123"


# --- WeCom / WeChat (WXBizMsgCrypt, from the 企业微信 / 公众号 加解密 documentation) -------------------------
def wx_signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    parts = sorted([token, timestamp, nonce, encrypted])
    return hashlib.sha1("".join(parts).encode()).hexdigest()


def _wx_key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def wx_encrypt(encoding_aes_key: str, message: str, receive_id: str) -> str:
    key = _wx_key(encoding_aes_key)
    raw = message.encode()
    plain = os.urandom(16) + struct.pack("!I", len(raw)) + raw + receive_id.encode()
    padder = padding.PKCS7(256).padder()  # the documents pad to 32 bytes
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def wx_decrypt(encoding_aes_key: str, encrypted: str) -> tuple[str, str]:
    """(message, receive id)."""
    key = _wx_key(encoding_aes_key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    padded = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
    unpadder = padding.PKCS7(256).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    (length,) = struct.unpack("!I", plain[16:20])
    return plain[20:20 + length].decode(), plain[20 + length:].decode()


def wx_text_xml(*, to_user: str, from_user: str, content: str, msg_id: str, msg_type: str = "text",
                agent_id: str | None = None) -> str:
    body = f"<Content><![CDATA[{content}]]></Content>" if msg_type == "text" else "<PicUrl><![CDATA[http://x/y.jpg]]></PicUrl><MediaId><![CDATA[m1]]></MediaId>"
    agent = f"<AgentID>{agent_id}</AgentID>" if agent_id else ""
    return (f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[{from_user}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{body}"
            f"<MsgId>{msg_id}</MsgId>{agent}</xml>")


@dataclass
class WxRequest:
    params: dict[str, str]
    body: str


def wx_request(token: str, aes_key: str, receive_id: str, inner_xml: str, *, to_user: str,
               timestamp: int | None = None, extra: dict[str, str] | None = None) -> WxRequest:
    """An encrypted callback as the platform sends it: signed query string + `<xml><Encrypt>`."""
    encrypted = wx_encrypt(aes_key, inner_xml, receive_id)
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = str(int.from_bytes(os.urandom(4), "big"))
    params = {"msg_signature": wx_signature(token, ts, nonce, encrypted), "timestamp": ts, "nonce": nonce,
              **(extra or {})}
    body = f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    return WxRequest(params, body)


# --- DingTalk / Slack / generic / Feishu ---------------------------------------------------------------------
def dingtalk_headers(secret: str, timestamp_ms: int | None = None) -> dict[str, str]:
    ts = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    return {"timestamp": ts, "sign": base64.b64encode(digest).decode(), "Content-Type": "application/json"}


def slack_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    basestring = b"v0:" + ts.encode() + b":" + body
    sig = "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig, "Content-Type": "application/json"}


def generic_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Faqbot-Timestamp": ts, "X-Faqbot-Signature": sig, "Content-Type": "application/json"}


def feishu_encrypt(encrypt_key: str, event: dict[str, Any]) -> bytes:
    """`{"encrypt": base64(iv + AES-256-CBC(sha256(key), iv, pkcs7(json)))}` as the body bytes."""
    key = hashlib.sha256(encrypt_key.encode()).digest()
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(json.dumps(event, ensure_ascii=False).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    encrypted = base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()
    return json.dumps({"encrypt": encrypted}).encode()


def feishu_headers(encrypt_key: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = base64.b16encode(os.urandom(8)).decode()
    sig = hashlib.sha256(ts.encode() + nonce.encode() + encrypt_key.encode() + body).hexdigest()
    return {"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce, "X-Lark-Signature": sig,
            "Content-Type": "application/json"}


def feishu_message_event(*, event_id: str, message_id: str, text: str, open_id: str, chat_type: str = "p2p",
                         message_type: str = "text", sender_type: str = "user", mention: bool = False,
                         token: str = FEISHU_TOKEN) -> dict[str, Any]:
    content = json.dumps({"text": ("@_user_1 " if mention else "") + text}, ensure_ascii=False) \
        if message_type == "text" else json.dumps({"image_key": "img_v2_x"})
    message: dict[str, Any] = {"message_id": message_id, "chat_id": "oc_chat1", "chat_type": chat_type,
                               "message_type": message_type, "content": content, "create_time": str(int(time.time() * 1000))}
    if mention:
        message["mentions"] = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "FAQ bot", "tenant_key": "t1"}]
    return {
        "schema": "2.0",
        "header": {"event_id": event_id, "token": token, "create_time": str(int(time.time() * 1000)),
                   "event_type": "im.message.receive_v1", "tenant_key": "t1", "app_id": FEISHU_APP_ID},
        "event": {"sender": {"sender_id": {"open_id": open_id, "user_id": "u1", "union_id": "on_1"},
                             "sender_type": sender_type, "tenant_key": "t1"},
                  "message": message},
    }


# --- fake platform APIs ---------------------------------------------------------------------------------------
@dataclass
class FakePlatform:
    """Feishu and Slack APIs on loopback: records every call; `fail_status` makes message sends fail."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    fail_status: int | None = None
    fail_delay_seconds: float = 0.0  # a slow as well as broken platform
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        def ready() -> dict[str, str]:
            return {"status": "ready"}

        @app.post("/open-apis/auth/v3/tenant_access_token/internal")
        async def feishu_token(request: Request) -> JSONResponse:
            body = await request.json()
            self._record("feishu_token", request, body)
            if body != {"app_id": FEISHU_APP_ID, "app_secret": FEISHU_APP_SECRET}:
                return JSONResponse({"code": 10014, "msg": "app secret invalid"}, status_code=400)
            return JSONResponse({"code": 0, "msg": "ok", "tenant_access_token": "t-fake-tenant", "expire": 7200})

        @app.post("/open-apis/im/v1/messages/{message_id}/reply")
        async def feishu_reply(message_id: str, request: Request) -> JSONResponse:
            self._record("feishu_reply", request, await request.json(), message_id=message_id)
            if self.fail_status:
                await asyncio.sleep(self.fail_delay_seconds)
                return JSONResponse({"code": 1, "msg": "down"}, status_code=self.fail_status)
            if request.headers.get("authorization") != "Bearer t-fake-tenant":
                return JSONResponse({"code": 99991663, "msg": "invalid token"}, status_code=400)
            return JSONResponse({"code": 0, "msg": "success", "data": {"message_id": "om_reply"}})

        @app.post("/api/chat.postMessage")
        async def slack_post(request: Request) -> JSONResponse:
            self._record("slack_post", request, await request.json())
            if self.fail_status:
                await asyncio.sleep(self.fail_delay_seconds)
                return JSONResponse({"ok": False, "error": "down"}, status_code=self.fail_status)
            if request.headers.get("authorization") != f"Bearer {SLACK_BOT_TOKEN}":
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            return JSONResponse({"ok": True, "ts": "1700000000.000200"})

        return app

    def _record(self, kind: str, request: Request, body: Any, **extra: Any) -> None:
        with self.lock:
            self.calls.append({"kind": kind, "body": body, "headers": dict(request.headers), **extra})

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["kind"] == kind]


def wait_for(predicate: Any, seconds: float = 10.0) -> Any:
    """Poll until `predicate()` is truthy (background deliveries); its last value."""
    deadline = time.monotonic() + seconds
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(0.05)
        value = predicate()
    return value


@dataclass
class ChannelServer:
    base: str
    fake: FakePlatform
    store: Any  # bot.store.Store on the server's database

    def misses(self, channel: str, session_id: str) -> list[dict[str, Any]]:
        return [m for m in self.store.list_misses(status=None, channel=channel) if m["session_id"] == session_id]

    def chats(self, channel: str, session_id: str) -> int:
        """Turns the matcher answered for this user (chat-log rows are committed in batches: let them land)."""
        from bot.store import chat_log

        time.sleep(CHAT_LOG_SETTLE_SECONDS)
        query = select(func.count()).select_from(chat_log).where(chat_log.c.channel == channel,
                                                                  chat_log.c.session_id == session_id)
        with self.store.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def dead_letters(self, platform: str, event_id: str) -> list[dict[str, Any]]:
        return [d for d in self.store.list_dead_letters(platform=platform) if d["event_id"] == event_id]


@contextlib.contextmanager
def serve_fake_platform(fake: FakePlatform) -> Iterator[str]:
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    with ThreadServer(config).run_in_thread() as base:
        yield base


@contextlib.contextmanager
def channel_server(tmp: Path, encoder: Any, *, kb_text: str = TINY_KB, **overrides: Any) -> Iterator[ChannelServer]:
    """faqbot (bot + admin) with every channel configured, outbound pointed at a fake platform server."""
    from admin.web.app import build_app
    from bot.settings import Settings
    from bot.store import Store

    kb = tmp / "kb"
    kb.mkdir(parents=True, exist_ok=True)
    (kb / "faq.yaml").write_text(kb_text, encoding="utf-8")
    fake = FakePlatform()
    with serve_fake_platform(fake) as fake_base:
        values: dict[str, Any] = dict(
            kb=kb, data_dir=tmp / "var",
            wecom_token=WECOM_TOKEN, wecom_aes_key=WECOM_AES_KEY, wecom_corp_id=WECOM_CORP_ID,
            wechat_token=WECHAT_TOKEN, wechat_aes_key=WECHAT_AES_KEY, wechat_app_id=WECHAT_APP_ID,
            dingtalk_app_secret=DINGTALK_SECRET,
            feishu_verification_token=FEISHU_TOKEN, feishu_encrypt_key=FEISHU_ENCRYPT_KEY,
            feishu_app_id=FEISHU_APP_ID, feishu_app_secret=FEISHU_APP_SECRET, feishu_api_base=fake_base,
            slack_signing_secret=SLACK_SECRET, slack_bot_token=SLACK_BOT_TOKEN, slack_api_base=fake_base + "/api",
            telegram_secret_token=TELEGRAM_SECRET, telegram_bot_token=TELEGRAM_BOT_TOKEN,
            webhook_secret=GENERIC_SECRET,
            outbound_attempts=3, outbound_backoff_seconds=0.05, outbound_timeout_seconds=2.0,
        )
        values.update(overrides)
        settings = Settings(**values)
        with serve_app(build_app(settings, encoder=encoder)) as base:
            store = Store(settings.resolved_database_url)
            try:
                yield ChannelServer(base, fake, store)
            finally:
                store.close()


def post(base: str, path: str, *, content: bytes | str, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(base + path, content=content, headers=headers or {}, params=params, timeout=30)
