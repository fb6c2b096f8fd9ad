"""WeCom (企业微信) and WeChat Official Account (公众号, safe mode) webhooks against a real server."""

from __future__ import annotations

import hashlib
import time
import uuid
import xml.etree.ElementTree as ET

import httpx
import pytest

from tests.channels_platforms import (
    INVOICE_ANSWER,
    MATCHED_QUESTION,
    UNKNOWN_QUESTION,
    WECHAT_AES_KEY,
    WECHAT_APP_ID,
    WECHAT_TOKEN,
    WECOM_AES_KEY,
    WECOM_CORP_ID,
    WECOM_TOKEN,
    channel_server,
    post,
    wx_decrypt,
    wx_encrypt,
    wx_request,
    wx_signature,
    wx_text_xml,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_encoder):
    with channel_server(tmp_path_factory.mktemp("wx"), bundled_encoder) as running:
        yield running


def fields(xml_text: str) -> dict[str, str]:
    return {child.tag: (child.text or "") for child in ET.fromstring(xml_text)}


def open_reply(response: httpx.Response, token: str, aes_key: str, receive_id: str) -> dict[str, str]:
    """Check the passive reply's signature as the platform would, decrypt it, return its fields."""
    assert response.status_code == 200, response.text
    outer = fields(response.text)
    expected = wx_signature(token, outer["TimeStamp"], outer["Nonce"], outer["Encrypt"])
    assert outer["MsgSignature"] == expected
    message, rid = wx_decrypt(aes_key, outer["Encrypt"])
    assert rid == receive_id
    return fields(message)


def wecom_message(user: str, content: str, msg_id: str, **kwargs) -> tuple[dict[str, str], str]:
    inner = wx_text_xml(to_user=WECOM_CORP_ID, from_user=user, content=content, msg_id=msg_id, agent_id="1000002",
                        **kwargs)
    req = wx_request(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID, inner, to_user=WECOM_CORP_ID)
    return req.params, req.body


def test_wecom_url_verification_decrypts_echostr(server):
    echo = "echo-" + uuid.uuid4().hex
    encrypted = wx_encrypt(WECOM_AES_KEY, echo, WECOM_CORP_ID)
    ts, nonce = str(int(time.time())), "1597212914"
    params = {"msg_signature": wx_signature(WECOM_TOKEN, ts, nonce, encrypted), "timestamp": ts, "nonce": nonce,
              "echostr": encrypted}
    ok = httpx.get(server.base + "/webhooks/wecom", params=params)
    assert ok.status_code == 200 and ok.text == echo
    bad = httpx.get(server.base + "/webhooks/wecom", params={**params, "msg_signature": "0" * 40})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "bad_signature"


def test_wecom_text_gets_encrypted_passive_reply(server):
    params, body = wecom_message("zhangsan", MATCHED_QUESTION, "7001")
    reply = open_reply(post(server.base, "/webhooks/wecom", content=body, params=params), WECOM_TOKEN, WECOM_AES_KEY,
                       WECOM_CORP_ID)
    assert reply["MsgType"] == "text"
    assert reply["ToUserName"] == "zhangsan" and reply["FromUserName"] == WECOM_CORP_ID
    assert reply["Content"] == INVOICE_ANSWER
    assert server.chats("wecom", "zhangsan") == 1


def test_wecom_miss_is_logged_with_channel_and_user(server):
    user = "lisi-" + uuid.uuid4().hex[:6]
    params, body = wecom_message(user, UNKNOWN_QUESTION, "7002")
    reply = open_reply(post(server.base, "/webhooks/wecom", content=body, params=params), WECOM_TOKEN, WECOM_AES_KEY,
                       WECOM_CORP_ID)
    assert reply["Content"].startswith("抱歉")  # the configured fallback answer
    misses = server.misses("wecom", user)
    assert len(misses) == 1 and misses[0]["message"] == UNKNOWN_QUESTION


def test_wecom_rejections_leave_no_miss(server):
    user = "mallory-" + uuid.uuid4().hex[:6]
    params, body = wecom_message(user, UNKNOWN_QUESTION, "7100")
    # Tampered ciphertext: one character of the Encrypt element changed; the signature no longer fits.
    start = body.index("<Encrypt><![CDATA[") + len("<Encrypt><![CDATA[")
    tampered = body[:start] + ("A" if body[start] != "A" else "B") + body[start + 1:]
    assert post(server.base, "/webhooks/wecom", content=tampered, params=params).status_code == 401
    # Wrong signature, and no signature at all.
    wrong = {**params, "msg_signature": hashlib.sha1(b"nope").hexdigest()}
    assert post(server.base, "/webhooks/wecom", content=body, params=wrong).status_code == 401
    missing = {k: v for k, v in params.items() if k != "msg_signature"}
    assert post(server.base, "/webhooks/wecom", content=body, params=missing).status_code == 401
    # Correctly signed, but an hour old.
    inner = wx_text_xml(to_user=WECOM_CORP_ID, from_user=user, content=UNKNOWN_QUESTION, msg_id="7101")
    old = wx_request(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID, inner, to_user=WECOM_CORP_ID,
                     timestamp=int(time.time()) - 3600)
    stale = post(server.base, "/webhooks/wecom", content=old.body, params=old.params)
    assert stale.status_code == 403 and stale.json()["error"]["code"] == "stale_timestamp"
    # Correctly signed with our token, but encrypted for another corp.
    other = wx_request(WECOM_TOKEN, WECOM_AES_KEY, "ww_other_corp", inner, to_user=WECOM_CORP_ID)
    assert post(server.base, "/webhooks/wecom", content=other.body, params=other.params).status_code == 401
    assert server.misses("wecom", user) == []
    assert server.chats("wecom", user) == 0


def test_wecom_retry_of_same_msgid_is_answered_once(server):
    user = "wangwu-" + uuid.uuid4().hex[:6]
    first = wecom_message(user, UNKNOWN_QUESTION, "7200")
    retry = wecom_message(user, UNKNOWN_QUESTION, "7200")  # the platform's retry: same MsgId, fresh nonce
    a = open_reply(post(server.base, "/webhooks/wecom", content=first[1], params=first[0]), WECOM_TOKEN,
                   WECOM_AES_KEY, WECOM_CORP_ID)
    b = open_reply(post(server.base, "/webhooks/wecom", content=retry[1], params=retry[0]), WECOM_TOKEN,
                   WECOM_AES_KEY, WECOM_CORP_ID)
    # The retry gets the same reply (in case the first response was lost) but the matcher ran once.
    assert a["Content"] == b["Content"]
    assert server.chats("wecom", user) == 1
    assert len(server.misses("wecom", user)) == 1
    # An exact replay of the first request does not reach the matcher either.
    post(server.base, "/webhooks/wecom", content=first[1], params=first[0])
    assert server.chats("wecom", user) == 1 and len(server.misses("wecom", user)) == 1


def test_wecom_non_text_and_events(server):
    user = "zhaoliu-" + uuid.uuid4().hex[:6]
    params, body = wecom_message(user, "", "7300", msg_type="image")
    reply = open_reply(post(server.base, "/webhooks/wecom", content=body, params=params), WECOM_TOKEN, WECOM_AES_KEY,
                       WECOM_CORP_ID)
    assert "只支持文字消息" in reply["Content"]
    event = (f"<xml><ToUserName><![CDATA[{WECOM_CORP_ID}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
             f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
             "<Event><![CDATA[enter_agent]]></Event><AgentID>1000002</AgentID></xml>")
    req = wx_request(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID, event, to_user=WECOM_CORP_ID)
    answered = post(server.base, "/webhooks/wecom", content=req.body, params=req.params)
    assert answered.status_code == 200 and answered.text == ""
    assert server.chats("wecom", user) == 0


def test_xml_with_a_dtd_is_refused(server):
    inner = wx_text_xml(to_user=WECOM_CORP_ID, from_user="u", content="hi", msg_id="7400")
    req = wx_request(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORP_ID, inner, to_user=WECOM_CORP_ID)
    evil = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + req.body
    response = post(server.base, "/webhooks/wecom", content=evil, params=req.params)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_payload"


def test_wechat_server_check_and_safe_mode_reply(server):
    ts, nonce = str(int(time.time())), "88231"
    signature = hashlib.sha1("".join(sorted([WECHAT_TOKEN, ts, nonce])).encode()).hexdigest()
    check = httpx.get(server.base + "/webhooks/wechat",
                      params={"signature": signature, "timestamp": ts, "nonce": nonce, "echostr": "4823947312"})
    assert check.status_code == 200 and check.text == "4823947312"
    forged = httpx.get(server.base + "/webhooks/wechat",
                       params={"signature": "f" * 40, "timestamp": ts, "nonce": nonce, "echostr": "1"})
    assert forged.status_code == 401

    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o-" + uuid.uuid4().hex[:4]
    inner = wx_text_xml(to_user="gh_0123456789ab", from_user=openid, content=MATCHED_QUESTION, msg_id="8801")
    req = wx_request(WECHAT_TOKEN, WECHAT_AES_KEY, WECHAT_APP_ID, inner, to_user="gh_0123456789ab",
                     extra={"openid": openid, "encrypt_type": "aes"})
    reply = open_reply(post(server.base, "/webhooks/wechat", content=req.body, params=req.params), WECHAT_TOKEN,
                       WECHAT_AES_KEY, WECHAT_APP_ID)
    assert reply["Content"] == INVOICE_ANSWER
    assert reply["ToUserName"] == openid and reply["FromUserName"] == "gh_0123456789ab"
    # A message encrypted for another AppID (or with the WeCom key) is refused.
    other = wx_request(WECHAT_TOKEN, WECHAT_AES_KEY, "wx_other_app", inner, to_user="gh_0123456789ab")
    assert post(server.base, "/webhooks/wechat", content=other.body, params=other.params).status_code == 401
    assert server.chats("wechat", openid) == 1
