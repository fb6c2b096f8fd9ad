"""Feishu and Slack: fast acknowledgement, replies delivered to a fake platform API, retries and dead letters."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.channels_platforms import (
    FEISHU_ENCRYPT_KEY,
    INVOICE_ANSWER,
    MATCHED_QUESTION,
    SLACK_BOT_TOKEN,
    SLACK_BOT_USER,
    SLACK_SECRET,
    UNKNOWN_QUESTION,
    channel_server,
    feishu_encrypt,
    feishu_headers,
    feishu_message_event,
    post,
    wait_for,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_encoder):
    with channel_server(tmp_path_factory.mktemp("outbound"), bundled_encoder) as running:
        yield running


@pytest.fixture
def fake(server):
    server.fake.fail_status, server.fake.fail_delay_seconds = None, 0.0
    yield server.fake
    server.fake.fail_status, server.fake.fail_delay_seconds = None, 0.0


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --- Feishu ------------------------------------------------------------------------------------------------
def send_feishu(server, event: dict, *, timestamp: int | None = None, headers: dict | None = None):
    body = feishu_encrypt(FEISHU_ENCRYPT_KEY, event)
    return post(server.base, "/webhooks/feishu", content=body,
                headers=headers or feishu_headers(FEISHU_ENCRYPT_KEY, body, timestamp))


def test_feishu_url_verification(server):
    challenge = str(uuid.uuid4())
    ok = send_feishu(server, {"challenge": challenge, "token": "feishuVerificationToken", "type": "url_verification"})
    assert ok.status_code == 200 and ok.json() == {"challenge": challenge}
    forged = send_feishu(server, {"challenge": challenge, "token": "someone-else", "type": "url_verification"})
    assert forged.status_code == 401


def test_feishu_message_is_acknowledged_then_replied_through_the_api(server, fake):
    open_id, message_id = new_id("ou_"), new_id("om_")
    event = feishu_message_event(event_id=new_id("ev"), message_id=message_id, text=MATCHED_QUESTION, open_id=open_id)
    started = time.perf_counter()
    response = send_feishu(server, event)
    assert response.status_code == 200 and time.perf_counter() - started < 2.0
    replies = wait_for(lambda: [c for c in fake.of("feishu_reply") if c["message_id"] == message_id])
    assert len(replies) == 1
    assert replies[0]["headers"]["authorization"] == "Bearer t-fake-tenant"
    assert replies[0]["body"]["msg_type"] == "text"
    assert json.loads(replies[0]["body"]["content"]) == {"text": INVOICE_ANSWER}
    assert server.chats("feishu", open_id) == 1


def test_feishu_rejections_leave_no_miss(server, fake):
    open_id = new_id("ou_")
    event = feishu_message_event(event_id=new_id("ev"), message_id=new_id("om_"), text=UNKNOWN_QUESTION,
                                 open_id=open_id)
    body = feishu_encrypt(FEISHU_ENCRYPT_KEY, event)
    headers = feishu_headers(FEISHU_ENCRYPT_KEY, body)
    tampered = body.replace(b'"encrypt": "', b'"encrypt": "A')
    assert post(server.base, "/webhooks/feishu", content=tampered, headers=headers).status_code == 401
    wrong = {**headers, "X-Lark-Signature": "0" * 64}
    assert post(server.base, "/webhooks/feishu", content=body, headers=wrong).status_code == 401
    unsigned = {"Content-Type": "application/json"}
    assert post(server.base, "/webhooks/feishu", content=body, headers=unsigned).status_code == 401
    stale = feishu_headers(FEISHU_ENCRYPT_KEY, body, int(time.time()) - 3600)
    assert post(server.base, "/webhooks/feishu", content=body, headers=stale).status_code == 403
    bad_token = feishu_message_event(event_id=new_id("ev"), message_id=new_id("om_"), text=UNKNOWN_QUESTION,
                                     open_id=open_id, token="not-our-token")
    assert send_feishu(server, bad_token).status_code == 401
    assert post(server.base, "/webhooks/feishu", content=body, headers=headers).status_code == 200
    replay = post(server.base, "/webhooks/feishu", content=body, headers=headers)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "replayed_request"
    assert wait_for(lambda: server.misses("feishu", open_id))
    time.sleep(0.3)
    assert len(server.misses("feishu", open_id)) == 1 and server.chats("feishu", open_id) == 1


def test_feishu_redelivered_event_is_answered_once(server, fake):
    open_id, message_id, event_id = new_id("ou_"), new_id("om_"), new_id("ev")
    event = feishu_message_event(event_id=event_id, message_id=message_id, text=UNKNOWN_QUESTION, open_id=open_id)
    assert send_feishu(server, event).status_code == 200
    assert send_feishu(server, event).status_code == 200  # Feishu's retry: re-encrypted, re-signed, same event_id
    assert wait_for(lambda: [c for c in fake.of("feishu_reply") if c["message_id"] == message_id])
    time.sleep(0.3)
    assert len([c for c in fake.of("feishu_reply") if c["message_id"] == message_id]) == 1
    assert server.chats("feishu", open_id) == 1 and len(server.misses("feishu", open_id)) == 1


def test_feishu_ignores_bots_and_unmentioned_group_messages(server, fake):
    open_id = new_id("ou_")
    for event in (
        feishu_message_event(event_id=new_id("ev"), message_id=new_id("om_"), text=MATCHED_QUESTION, open_id=open_id,
                             sender_type="app"),
        feishu_message_event(event_id=new_id("ev"), message_id=new_id("om_"), text=MATCHED_QUESTION, open_id=open_id,
                             chat_type="group"),
    ):
        assert send_feishu(server, event).status_code == 200
    mentioned_id = new_id("om_")
    mentioned = feishu_message_event(event_id=new_id("ev"), message_id=mentioned_id, text=MATCHED_QUESTION,
                                     open_id=open_id, chat_type="group", mention=True)
    assert send_feishu(server, mentioned).status_code == 200
    reply = wait_for(lambda: [c for c in fake.of("feishu_reply") if c["message_id"] == mentioned_id])
    assert json.loads(reply[0]["body"]["content"])["text"] == INVOICE_ANSWER  # "@_user_1" was cut from the question
    image_id = new_id("om_")
    image = feishu_message_event(event_id=new_id("ev"), message_id=image_id, text="", open_id=open_id,
                                 message_type="image")
    assert send_feishu(server, image).status_code == 200
    polite = wait_for(lambda: [c for c in fake.of("feishu_reply") if c["message_id"] == image_id])
    assert "只支持文字消息" in json.loads(polite[0]["body"]["content"])["text"]
    assert server.chats("feishu", open_id) == 1


def test_feishu_platform_down_retries_then_dead_letter(server, fake):
    fake.fail_status, fake.fail_delay_seconds = 500, 0.5  # three slow failures: 1.5 s if the webhook waited
    message_id, event_id = new_id("om_"), new_id("ev")
    event = feishu_message_event(event_id=event_id, message_id=message_id, text=MATCHED_QUESTION, open_id=new_id("ou_"))
    started = time.perf_counter()
    assert send_feishu(server, event).status_code == 200
    assert time.perf_counter() - started < 1.0  # acknowledged without waiting for the delivery
    letters = wait_for(lambda: server.dead_letters("feishu", event_id))
    assert len(letters) == 1 and letters[0]["attempts"] == 3 and "500" in letters[0]["error"]
    assert json.loads(letters[0]["payload"]["content"]) == {"text": INVOICE_ANSWER}
    assert letters[0]["target"].endswith(f"/open-apis/im/v1/messages/{message_id}/reply")
    assert len([c for c in fake.of("feishu_reply") if c["message_id"] == message_id]) == 3


# --- Slack ---------------------------------------------------------------------------------------------------
def slack_event(event: dict, event_id: str) -> bytes:
    envelope = {
        "token": "legacy-verification-token", "team_id": "T0001", "api_app_id": "A0001", "event": event,
        "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
        "authorizations": [{"enterprise_id": None, "team_id": "T0001", "user_id": SLACK_BOT_USER, "is_bot": True}],
    }
    return json.dumps(envelope, ensure_ascii=False).encode()


def slack_sign(body: bytes, timestamp: int | None = None, secret: str = SLACK_SECRET) -> dict[str, str]:
    from tests.channels_platforms import slack_headers

    return slack_headers(secret, body, timestamp)


def mention(user: str, text: str, ts: str, channel: str = "C0GENERAL") -> dict:
    return {"type": "app_mention", "user": user, "text": f"<@{SLACK_BOT_USER}> {text}", "ts": ts, "channel": channel,
            "event_ts": ts}


def posts_in(fake, channel: str) -> list[dict]:
    return [c for c in fake.of("slack_post") if c["body"]["channel"] == channel]


def test_slack_url_verification(server):
    body = json.dumps({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                       "type": "url_verification"}).encode()
    ok = post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body))
    assert ok.status_code == 200 and ok.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body, secret="x" * 32)).status_code == 401


def test_slack_mention_gets_thread_reply(server, fake):
    user, channel, ts = new_id("U"), new_id("C"), "1700000000.000100"
    body = slack_event(mention(user, MATCHED_QUESTION, ts, channel), new_id("Ev"))
    response = post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body))
    assert response.status_code == 200
    posted = wait_for(lambda: posts_in(fake, channel))
    assert len(posted) == 1
    assert posted[0]["body"] == {"channel": channel, "text": INVOICE_ANSWER, "thread_ts": ts}
    assert posted[0]["headers"]["authorization"] == f"Bearer {SLACK_BOT_TOKEN}"
    assert server.chats("slack", user) == 1


def test_slack_rejections_leave_no_miss(server, fake):
    user, channel = new_id("U"), new_id("C")
    body = slack_event(mention(user, UNKNOWN_QUESTION, "1700000001.000100", channel), new_id("Ev"))
    headers = slack_sign(body)
    tampered = body.replace(b"event_callback", b"event_callbacK")
    assert post(server.base, "/webhooks/slack", content=tampered, headers=headers).status_code == 401
    assert post(server.base, "/webhooks/slack", content=body, headers={**headers, "X-Slack-Signature": "v0=" + "a" * 64}).status_code == 401
    assert post(server.base, "/webhooks/slack", content=body, headers={"Content-Type": "application/json"}).status_code == 401
    stale = post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body, int(time.time()) - 301))
    assert stale.status_code == 403 and stale.json()["error"]["code"] == "stale_timestamp"
    assert post(server.base, "/webhooks/slack", content=body, headers=headers).status_code == 200
    replay = post(server.base, "/webhooks/slack", content=body, headers=headers)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "replayed_request"
    assert wait_for(lambda: posts_in(fake, channel))
    time.sleep(0.3)
    assert len(posts_in(fake, channel)) == 1
    assert len(server.misses("slack", user)) == 1 and server.chats("slack", user) == 1


def test_slack_retry_of_same_event_id_is_answered_once(server, fake):
    user, channel, event_id = new_id("U"), new_id("C"), new_id("Ev")
    body = slack_event(mention(user, UNKNOWN_QUESTION, "1700000002.000100", channel), event_id)
    assert post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body)).status_code == 200
    retry_headers = {**slack_sign(body, int(time.time()) + 1), "X-Slack-Retry-Num": "1",
                     "X-Slack-Retry-Reason": "http_timeout"}
    assert post(server.base, "/webhooks/slack", content=body, headers=retry_headers).status_code == 200
    assert wait_for(lambda: posts_in(fake, channel))
    time.sleep(0.3)
    assert len(posts_in(fake, channel)) == 1
    assert server.chats("slack", user) == 1 and len(server.misses("slack", user)) == 1


def test_slack_ignores_bots_edits_joins_and_channel_chatter(server, fake):
    user, channel = new_id("U"), new_id("C")
    ignored = [
        {"type": "message", "user": SLACK_BOT_USER, "text": MATCHED_QUESTION, "ts": "1.1", "channel": channel,
         "channel_type": "im"},
        {"type": "message", "bot_id": "B01", "text": MATCHED_QUESTION, "ts": "1.2", "channel": channel,
         "channel_type": "im"},
        {"type": "message", "subtype": "message_changed", "channel": channel, "channel_type": "im", "ts": "1.3",
         "message": {"user": user, "text": MATCHED_QUESTION}},
        {"type": "message", "subtype": "channel_join", "user": user, "text": f"<@{user}> has joined", "ts": "1.4",
         "channel": channel, "channel_type": "channel"},
        {"type": "message", "user": user, "text": MATCHED_QUESTION, "ts": "1.5", "channel": channel,
         "channel_type": "channel"},
    ]
    for event in ignored:
        body = slack_event(event, new_id("Ev"))
        assert post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body)).status_code == 200
    dm_channel = new_id("D")
    dm = slack_event({"type": "message", "user": user, "text": "可以 &lt;开票&gt; 吗", "ts": "1.6",
                      "channel": dm_channel, "channel_type": "im"}, new_id("Ev"))
    assert post(server.base, "/webhooks/slack", content=dm, headers=slack_sign(dm)).status_code == 200
    assert wait_for(lambda: posts_in(fake, dm_channel))
    time.sleep(0.3)
    assert posts_in(fake, channel) == []
    assert server.chats("slack", user) == 1


def test_slack_platform_down_retries_then_dead_letter(server, fake):
    fake.fail_status, fake.fail_delay_seconds = 503, 0.5
    user, channel, event_id = new_id("U"), new_id("C"), new_id("Ev")
    body = slack_event(mention(user, MATCHED_QUESTION, "1700000003.000100", channel), event_id)
    started = time.perf_counter()
    assert post(server.base, "/webhooks/slack", content=body, headers=slack_sign(body)).status_code == 200
    assert time.perf_counter() - started < 1.0  # acknowledged without waiting for the delivery
    letters = wait_for(lambda: server.dead_letters("slack", event_id))
    assert len(letters) == 1 and letters[0]["attempts"] == 3 and "503" in letters[0]["error"]
    assert letters[0]["payload"]["text"] == INVOICE_ANSWER and letters[0]["payload"]["channel"] == channel
    assert len(posts_in(fake, channel)) == 3
