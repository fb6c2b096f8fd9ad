"""DingTalk, Telegram and the generic signed webhook (answers in the HTTP response) against a real server."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.channels_platforms import (
    DINGTALK_SECRET,
    GENERIC_SECRET,
    INVOICE_ANSWER,
    MATCHED_QUESTION,
    TELEGRAM_BOT_TOKEN,
    TELEGRAM_SECRET,
    UNKNOWN_QUESTION,
    channel_server,
    dingtalk_headers,
    generic_headers,
    post,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_encoder):
    with channel_server(tmp_path_factory.mktemp("json"), bundled_encoder) as running:
        yield running


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- DingTalk ------------------------------------------------------------------------------------------------
def dingtalk_body(*, user: str, text: str, msg_id: str, group: bool = False, at_bot: bool = True,
                  msgtype: str = "text") -> bytes:
    body = {
        "conversationId": "cidGroup==" if group else "cidSingle==", "atUsers": [{"dingtalkId": "$:LWCP_v1:$bot"}],
        "chatbotCorpId": "ding9f50b15bccd16741", "chatbotUserId": "$:LWCP_v1:$bot", "msgId": msg_id,
        "senderNick": "张三", "isAdmin": False, "senderStaffId": user, "sessionWebhookExpiredTime": 1700000000000,
        "createAt": int(time.time() * 1000), "senderCorpId": "ding9f50b15bccd16741",
        "conversationType": "2" if group else "1", "senderId": "$:LWCP_v1:$" + user, "isInAtList": at_bot,
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=x", "robotCode": "dingbot",
        "msgtype": msgtype,
    }
    if msgtype == "text":
        body["text"] = {"content": (" " if group else "") + text}
    else:
        body["content"] = {"downloadCode": "x", "pictureDownloadCode": "y"}
    return json.dumps(body, ensure_ascii=False).encode()


def test_dingtalk_answers_with_markdown_message(server):
    user = new_id("staff")
    response = post(server.base, "/webhooks/dingtalk", content=dingtalk_body(user=user, text=MATCHED_QUESTION,
                                                                             msg_id=new_id("msg")),
                    headers=dingtalk_headers(DINGTALK_SECRET))
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["msgtype"] == "markdown"
    assert INVOICE_ANSWER in message["markdown"]["text"] and message["markdown"]["title"]
    assert server.chats("dingtalk", user) == 1


def test_dingtalk_rejections_leave_no_miss(server):
    user = new_id("staff")
    body = dingtalk_body(user=user, text=UNKNOWN_QUESTION, msg_id=new_id("msg"))
    good = dingtalk_headers(DINGTALK_SECRET)
    wrong = dingtalk_headers("not-the-app-secret")
    assert post(server.base, "/webhooks/dingtalk", content=body, headers=wrong).status_code == 401
    assert post(server.base, "/webhooks/dingtalk", content=body, headers={"Content-Type": "application/json"}).status_code == 401
    # Signed right, but two hours old (DingTalk allows one hour).
    old = dingtalk_headers(DINGTALK_SECRET, int(time.time() * 1000) - 2 * 3600 * 1000)
    stale = post(server.base, "/webhooks/dingtalk", content=body, headers=old)
    assert stale.status_code == 403 and stale.json()["error"]["code"] == "stale_timestamp"
    assert server.misses("dingtalk", user) == []
    # The first delivery is answered (a miss); an exact replay of it is refused.
    assert post(server.base, "/webhooks/dingtalk", content=body, headers=good).status_code == 200
    replay = post(server.base, "/webhooks/dingtalk", content=body, headers=good)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "replayed_request"
    # The sign does not cover the body: a captured sign on another body is refused too.
    swapped = dingtalk_body(user=user, text="另一个问题被替换进来", msg_id=new_id("msg"))
    assert post(server.base, "/webhooks/dingtalk", content=swapped, headers=good).status_code == 403
    assert len(server.misses("dingtalk", user)) == 1
    assert server.chats("dingtalk", user) == 1


def test_dingtalk_retry_of_same_msgid_is_answered_once(server):
    user, msg_id = new_id("staff"), new_id("msg")
    first = post(server.base, "/webhooks/dingtalk", content=dingtalk_body(user=user, text=UNKNOWN_QUESTION, msg_id=msg_id),
                 headers=dingtalk_headers(DINGTALK_SECRET))
    retry = post(server.base, "/webhooks/dingtalk", content=dingtalk_body(user=user, text=UNKNOWN_QUESTION, msg_id=msg_id),
                 headers=dingtalk_headers(DINGTALK_SECRET, int(time.time() * 1000) + 7))
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()
    assert server.chats("dingtalk", user) == 1 and len(server.misses("dingtalk", user)) == 1


def test_dingtalk_ignores_group_chatter_and_answers_pictures_politely(server):
    user = new_id("staff")
    chatter = post(server.base, "/webhooks/dingtalk",
                   content=dingtalk_body(user=user, text=MATCHED_QUESTION, msg_id=new_id("msg"), group=True, at_bot=False),
                   headers=dingtalk_headers(DINGTALK_SECRET))
    assert chatter.status_code == 200 and chatter.json() == {}
    mention = post(server.base, "/webhooks/dingtalk",
                   content=dingtalk_body(user=user, text=MATCHED_QUESTION, msg_id=new_id("msg"), group=True),
                   headers=dingtalk_headers(DINGTALK_SECRET, int(time.time() * 1000) + 3))
    assert INVOICE_ANSWER in mention.json()["markdown"]["text"]
    picture = post(server.base, "/webhooks/dingtalk",
                   content=dingtalk_body(user=user, text="", msg_id=new_id("msg"), msgtype="picture"),
                   headers=dingtalk_headers(DINGTALK_SECRET, int(time.time() * 1000) + 5))
    assert picture.json() == {"msgtype": "text", "text": {"content": picture.json()["text"]["content"]}}
    assert "只支持文字消息" in picture.json()["text"]["content"]
    assert server.chats("dingtalk", user) == 1


# --- Telegram ------------------------------------------------------------------------------------------------
def telegram_update(update_id: int, *, user_id: int, text: str | None, chat_type: str = "private",
                    entities: list[dict] | None = None, reply_to_bot: bool = False, edited: bool = False) -> bytes:
    chat_id = user_id if chat_type == "private" else -1001234567890
    message: dict = {"message_id": update_id % 100000, "date": int(time.time()),
                     "from": {"id": user_id, "is_bot": False, "first_name": "Li", "language_code": "zh-hans"},
                     "chat": {"id": chat_id, "type": chat_type}}
    if text is None:
        message["photo"] = [{"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 90}]
    else:
        message["text"] = text
    if entities:
        message["entities"] = entities
    if reply_to_bot:
        message["reply_to_message"] = {"message_id": 1, "date": 0, "chat": message["chat"],
                                       "from": {"id": int(TELEGRAM_BOT_TOKEN.split(":")[0]), "is_bot": True,
                                                "first_name": "FAQ"}, "text": "…"}
    return json.dumps({"update_id": update_id, ("edited_message" if edited else "message"): message},
                      ensure_ascii=False).encode()


def tg_headers(token: str = TELEGRAM_SECRET) -> dict[str, str]:
    return {"X-Telegram-Bot-Api-Secret-Token": token, "Content-Type": "application/json"}


def fresh_update_id() -> int:
    return uuid.uuid4().int % 10**9


def test_telegram_answers_with_send_message_method(server):
    user = fresh_update_id()
    response = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                    content=telegram_update(fresh_update_id(), user_id=user, text=MATCHED_QUESTION))
    assert response.status_code == 200
    assert response.json() == {"method": "sendMessage", "chat_id": user, "text": INVOICE_ANSWER}
    assert server.chats("telegram", str(user)) == 1


def test_telegram_secret_token_and_duplicate_updates(server):
    user = fresh_update_id()
    update = telegram_update(fresh_update_id(), user_id=user, text=UNKNOWN_QUESTION)
    assert post(server.base, "/webhooks/telegram", content=update, headers=tg_headers("wrong")).status_code == 401
    assert post(server.base, "/webhooks/telegram", content=update,
                headers={"Content-Type": "application/json"}).status_code == 401
    assert server.misses("telegram", str(user)) == []
    first = post(server.base, "/webhooks/telegram", content=update, headers=tg_headers())
    again = post(server.base, "/webhooks/telegram", content=update, headers=tg_headers())
    assert first.json()["text"].startswith("抱歉") and again.json() == first.json()
    assert server.chats("telegram", str(user)) == 1 and len(server.misses("telegram", str(user))) == 1


def test_telegram_ignores_edits_and_unaddressed_group_messages(server):
    user = fresh_update_id()
    edit = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                content=telegram_update(fresh_update_id(), user_id=user, text=MATCHED_QUESTION, edited=True))
    assert edit.json() == {}
    chatter = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                   content=telegram_update(fresh_update_id(), user_id=user, text=MATCHED_QUESTION, chat_type="group"))
    assert chatter.json() == {}
    # "/ask@faq_bot 可以开票吗" : the command entity is cut out (offsets in UTF-16 units) before matching.
    command = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                   content=telegram_update(fresh_update_id(), user_id=user, text="/ask@faq_bot " + MATCHED_QUESTION,
                                           chat_type="supergroup",
                                           entities=[{"type": "bot_command", "offset": 0, "length": 12}]))
    assert command.json()["text"] == INVOICE_ANSWER
    assert command.json()["chat_id"] == -1001234567890 and "reply_parameters" in command.json()
    replied = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                   content=telegram_update(fresh_update_id(), user_id=user, text=MATCHED_QUESTION, chat_type="group",
                                           reply_to_bot=True))
    assert replied.json()["text"] == INVOICE_ANSWER
    photo = post(server.base, "/webhooks/telegram", headers=tg_headers(),
                 content=telegram_update(fresh_update_id(), user_id=user, text=None))
    assert "只支持文字消息" in photo.json()["text"]
    assert server.chats("telegram", str(user)) == 2


# --- generic -----------------------------------------------------------------------------------------------
def generic_body(message: str, session_id: str, event_id: str | None = None) -> bytes:
    body = {"message": message, "session_id": session_id}
    if event_id:
        body["event_id"] = event_id
    return json.dumps(body, ensure_ascii=False).encode()


def test_generic_answers_with_chat_json(server):
    session = new_id("s")
    body = generic_body(MATCHED_QUESTION, session)
    response = post(server.base, "/webhooks/generic", content=body, headers=generic_headers(GENERIC_SECRET, body))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["reply"] == INVOICE_ANSWER and data["matched"] is True and data["faq_id"] == "invoice"
    assert 0 <= data["percent"] <= 100 and "duplicate" not in data  # no event_id: nothing to deduplicate
    assert server.chats("generic", session) == 1


def test_generic_rejections_leave_no_miss(server):
    session = new_id("s")
    body = generic_body(UNKNOWN_QUESTION, session)
    headers = generic_headers(GENERIC_SECRET, body)
    tampered = body.replace(b"session_id", b"session_iD")
    assert post(server.base, "/webhooks/generic", content=tampered, headers=headers).status_code == 401
    wrong = generic_headers("another-secret", body)
    assert post(server.base, "/webhooks/generic", content=body, headers=wrong).status_code == 401
    assert post(server.base, "/webhooks/generic", content=body,
                headers={"Content-Type": "application/json"}).status_code == 401
    old = generic_headers(GENERIC_SECRET, body, int(time.time()) - 301)
    assert post(server.base, "/webhooks/generic", content=body, headers=old).status_code == 403
    future = generic_headers(GENERIC_SECRET, body, int(time.time()) + 600)
    assert post(server.base, "/webhooks/generic", content=body, headers=future).status_code == 403
    assert server.misses("generic", session) == []
    assert post(server.base, "/webhooks/generic", content=body, headers=headers).json()["matched"] is False
    replay = post(server.base, "/webhooks/generic", content=body, headers=headers)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "replayed_request"
    assert len(server.misses("generic", session)) == 1


def test_generic_retry_with_event_id_is_answered_once(server):
    session, event_id = new_id("s"), new_id("evt")
    body = generic_body(UNKNOWN_QUESTION, session, event_id)
    first = post(server.base, "/webhooks/generic", content=body, headers=generic_headers(GENERIC_SECRET, body))
    retry = post(server.base, "/webhooks/generic", content=body,
                 headers=generic_headers(GENERIC_SECRET, body, int(time.time()) + 1))
    assert first.status_code == retry.status_code == 200
    assert first.json()["duplicate"] is False and retry.json()["duplicate"] is True
    assert retry.json()["miss_id"] == first.json()["miss_id"] is not None
    assert len(server.misses("generic", session)) == 1 and server.chats("generic", session) == 1


def test_generic_validates_the_message(server):
    for body in (b'{"message": 5}', b'{"message": "  \\u0000 "}', b"[1]", b"not json"):
        response = post(server.base, "/webhooks/generic", content=body, headers=generic_headers(GENERIC_SECRET, body))
        assert response.status_code in (400, 422), (body, response.text)
        assert response.json()["status"] == "error"


def test_disabled_and_unknown_channels_answer_404(live_app):
    for name in ("slack", "wecom", "generic"):
        response = httpx.post(f"{live_app}/webhooks/{name}", content=b"{}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "channel_disabled"
    unknown = httpx.post(f"{live_app}/webhooks/myspace", content=b"{}")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_channel"
