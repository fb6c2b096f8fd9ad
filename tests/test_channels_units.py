"""The channel building blocks on their own: the platforms' crypto against the documents, Markdown
per platform, event-id claims in a real SQLite file (TTL, restarts, several processes), the sender."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from bot.channels.crypto import CryptoError, WXBizMsgCrypt, feishu_decrypt, feishu_signature, plain_signature
from bot.channels.sender import RetryPolicy, Sender
from bot.channels.slack import SlackChannel, slack_text_to_question
from bot.channels.text import to_dingtalk, to_plain, to_slack, truncate
from bot.store import Store
from tests.channels_platforms import (
    FEISHU_ENCRYPT_KEY,
    SLACK_BOT_TOKEN,
    WECOM_AES_KEY,
    WECOM_CORP_ID,
    WECOM_TOKEN,
    FakePlatform,
    feishu_encrypt,
    feishu_headers,
    serve_fake_platform,
    wx_decrypt,
    wx_encrypt,
    wx_signature,
)


# --- crypto: faqbot's side against the test's document-derived side, both directions ------------------------
def test_wxbizmsgcrypt_interoperates_with_the_documented_scheme():
    crypt = WXBizMsgCrypt(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID)
    message = "<xml><Content><![CDATA[发票 🧾 invoice]]></Content></xml>"
    assert crypt.decrypt(wx_encrypt(WECOM_AES_KEY, message, WECOM_CORP_ID)) == message
    assert wx_decrypt(WECOM_AES_KEY, crypt.encrypt(message)) == (message, WECOM_CORP_ID)
    # Block-size edge: lengths around the 32-byte padding boundary.
    for size in range(0, 70):
        text = "x" * size
        assert crypt.decrypt(wx_encrypt(WECOM_AES_KEY, text, WECOM_CORP_ID)) == text
    assert crypt.signature("1409659813", "1372623149", "msg") == wx_signature(WECOM_TOKEN, "1409659813", "1372623149", "msg")


def test_wxbizmsgcrypt_refuses_foreign_and_broken_ciphertext():
    crypt = WXBizMsgCrypt(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID)
    with pytest.raises(CryptoError, match="another"):
        crypt.decrypt(wx_encrypt(WECOM_AES_KEY, "hi", "ww_other"))
    other_key = base64.b64encode(bytes(range(50, 82))).decode().rstrip("=")
    with pytest.raises(CryptoError):
        crypt.decrypt(wx_encrypt(other_key, "hi", WECOM_CORP_ID))
    for garbage in ("", "not base64!!", base64.b64encode(b"short").decode()):
        with pytest.raises(CryptoError):
            crypt.decrypt(garbage)


def test_wechat_plain_signature_matches_the_document():
    expected = hashlib.sha1("".join(sorted(["tok", "1510000000", "nonce1"])).encode()).hexdigest()
    assert plain_signature("tok", "1510000000", "nonce1") == expected


def test_feishu_decrypt_and_signature_match_the_documented_scheme():
    event = {"challenge": "c-1", "token": "t", "type": "url_verification", "中文": "可以开票吗"}
    body = feishu_encrypt(FEISHU_ENCRYPT_KEY, event)
    assert json.loads(feishu_decrypt(FEISHU_ENCRYPT_KEY, json.loads(body)["encrypt"])) == event
    headers = feishu_headers(FEISHU_ENCRYPT_KEY, body)
    assert feishu_signature(headers["X-Lark-Request-Timestamp"], headers["X-Lark-Request-Nonce"], FEISHU_ENCRYPT_KEY,
                            body) == headers["X-Lark-Signature"]
    with pytest.raises(CryptoError):
        feishu_decrypt("another key", json.loads(body)["encrypt"])


# --- text per platform ---------------------------------------------------------------------------------------
ANSWER_MD = """## 开发票

**支持**开具 *电子* 发票：

- 在[我的订单](https://shop.example.com/orders?a=1&b=2)里申请
- 选择 `增值税普通发票`

> 纸质发票需另付邮费"""


def test_markdown_to_plain_text():
    plain = to_plain(ANSWER_MD)
    assert plain == ("开发票\n\n支持开具 电子 发票：\n\n• 在我的订单 (https://shop.example.com/orders?a=1&b=2)里申请\n"
                     "• 选择 增值税普通发票\n\n纸质发票需另付邮费")
    assert to_plain("snake_case_name and 2*3*4") == "snake_case_name and 2*3*4"
    assert to_plain("开具*电子*发票，**现在**就去") == "开具电子发票，现在就去"


def test_markdown_to_slack_mrkdwn():
    slack = to_slack(ANSWER_MD)
    assert slack.startswith("*开发票*")
    assert "*支持*开具 _电子_ 发票" in slack
    assert "<https://shop.example.com/orders?a=1&amp;b=2|我的订单>" in slack
    assert "• 选择 `增值税普通发票`" in slack
    assert "&gt; 纸质发票" in slack  # Slack wants < > & escaped in text


def test_markdown_to_dingtalk_and_truncation():
    ding = to_dingtalk("第一行\n第二行\n\n```\ncode\n```")
    assert ding == "第一行  \n第二行  \n\ncode"
    assert truncate("发票" * 10, 5) == "发票发票…"
    cut = truncate("发" * 1000, 2048, utf8_bytes=True)
    assert len(cut.encode()) <= 2048 and cut.endswith("…")
    assert slack_text_to_question("<@U0BOT> 可以 &lt;开票&gt; 吗 <https://x.cn|链接>") == "可以 <开票> 吗 链接"


# --- event claims in the database ----------------------------------------------------------------------------
def test_event_claims_survive_restart_and_expire(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = Store(url)
    assert store.claim_event("slack", "Ev1", ttl_seconds=3600) is True
    assert store.claim_event("slack", "Ev1", ttl_seconds=3600) is False
    assert store.claim_event("feishu", "Ev1", ttl_seconds=3600) is True  # ids are per platform
    store.set_event_reply("slack", "Ev1", "答案")
    store.close()
    restarted = Store(url)
    assert restarted.claim_event("slack", "Ev1", ttl_seconds=3600) is False
    assert restarted.event_reply("slack", "Ev1") == "答案"
    assert restarted.claim_event("slack", "Ev2", ttl_seconds=0.2) is True
    time.sleep(0.3)
    assert restarted.claim_event("slack", "Ev2", ttl_seconds=0.2) is True  # expired: a new delivery
    assert restarted.purge_events(ttl_seconds=0.0) >= 3
    restarted.close()


def _claim_all(args: tuple[str, list[str]]) -> list[str]:
    url, ids = args
    store = Store(url)
    try:
        return [event_id for event_id in ids if store.claim_event("telegram", event_id, ttl_seconds=3600)]
    finally:
        store.close()


def test_event_claims_are_atomic_across_processes(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    Store(url).close()
    ids = [str(i) for i in range(40)]
    with ProcessPoolExecutor(max_workers=4) as pool:
        won = list(pool.map(_claim_all, [(url, ids)] * 4))
    every_claim = [event_id for batch in won for event_id in batch]
    assert sorted(every_claim, key=int) == ids  # each id claimed by exactly one process


# --- sender ---------------------------------------------------------------------------------------------------
def test_sender_does_not_retry_a_permanent_error_and_retries_a_dead_host(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'sender.db'}")
    sender = Sender(store, RetryPolicy(timeout_seconds=1.0, attempts=3, backoff_seconds=0.05))
    fake = FakePlatform()
    with serve_fake_platform(fake) as base:

        async def wrong_token(_: object) -> dict[str, str]:
            return {"Authorization": "Bearer xoxb-wrong"}

        delivered = asyncio.run(sender.deliver(platform="slack", event_id="EvP", url=f"{base}/api/chat.postMessage",
                                               payload={"channel": "C1", "text": "hi"}, auth=wrong_token,
                                               check=SlackChannel._check))
        assert delivered is False
        assert len(fake.of("slack_post")) == 1  # invalid_auth will not get better: no retry

        async def right_token(_: object) -> dict[str, str]:
            return {"Authorization": f"Bearer {SLACK_BOT_TOKEN}"}

        assert asyncio.run(sender.deliver(platform="slack", event_id="EvOK", url=f"{base}/api/chat.postMessage",
                                          payload={"channel": "C1", "text": "hi"}, auth=right_token,
                                          check=SlackChannel._check)) is True
    started = time.perf_counter()
    assert asyncio.run(sender.deliver(platform="slack", event_id="EvDown", url=f"{base}/api/chat.postMessage",
                                      payload={"channel": "C1", "text": "hi"})) is False
    assert time.perf_counter() - started >= 0.05 + 0.1  # backed off twice between the three tries
    letters = {d["event_id"]: d for d in store.list_dead_letters(platform="slack")}
    assert set(letters) == {"EvP", "EvDown"}
    assert letters["EvP"]["attempts"] == 1 and "invalid_auth" in letters["EvP"]["error"]
    assert letters["EvDown"]["attempts"] == 3 and "Connect" in letters["EvDown"]["error"]
    assert letters["EvDown"]["payload"] == {"channel": "C1", "text": "hi"}
    store.close()


def test_channel_settings_come_from_the_documented_env_names(monkeypatch, tmp_path: Path):
    from bot.channels import PLATFORMS, enabled_channels
    from bot.settings import Settings

    env = {
        "FAQBOT_WEBHOOK_SECRET": "s" * 16,
        "FAQBOT_WECOM_TOKEN": "t", "FAQBOT_WECOM_AES_KEY": WECOM_AES_KEY, "FAQBOT_WECOM_CORP_ID": "ww1",
        "FAQBOT_WECHAT_TOKEN": "t", "FAQBOT_WECHAT_AES_KEY": WECOM_AES_KEY, "FAQBOT_WECHAT_APP_ID": "wx1",
        "FAQBOT_DINGTALK_APP_SECRET": "d",
        "FAQBOT_FEISHU_VERIFICATION_TOKEN": "v", "FAQBOT_FEISHU_ENCRYPT_KEY": "e", "FAQBOT_FEISHU_APP_ID": "cli",
        "FAQBOT_FEISHU_APP_SECRET": "s",
        "FAQBOT_SLACK_SIGNING_SECRET": "s", "FAQBOT_SLACK_BOT_TOKEN": "xoxb-1",
        "FAQBOT_TELEGRAM_SECRET_TOKEN": "t", "FAQBOT_TELEGRAM_BOT_TOKEN": "1:x",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAQBOT_SLACK_API_BASE", "http://127.0.0.1:9/api")
    settings = Settings(data_dir=tmp_path)
    assert enabled_channels(settings) == list(PLATFORMS)
    assert settings.slack_api_base == "http://127.0.0.1:9/api"
    assert Settings(data_dir=tmp_path, wecom_corp_id="", slack_bot_token="").slack_bot_token is None
    monkeypatch.setenv("FAQBOT_SLACK_BOT_TOKEN", "")
    monkeypatch.delenv("FAQBOT_WECOM_CORP_ID")
    assert "slack" not in enabled_channels(Settings(data_dir=tmp_path))
    assert "wecom" not in enabled_channels(Settings(data_dir=tmp_path))
    with pytest.raises(ValueError, match="EncodingAESKey"):
        Settings(data_dir=tmp_path, wecom_aes_key="too-short")
