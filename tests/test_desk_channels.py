"""What the customer-service desk features look like through the webhooks (real server, signed deliveries)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.channels_platforms import (
    DINGTALK_SECRET,
    GENERIC_SECRET,
    channel_server,
    dingtalk_headers,
    generic_headers,
    post,
)
from tests.desk_kb import DESK_KB
from tests.test_channels_json import dingtalk_body

pytestmark = pytest.mark.slow
HANDOFF_URL = "https://kefu.example.com/im"


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_encoder):
    with channel_server(tmp_path_factory.mktemp("desk"), bundled_encoder, kb_text=DESK_KB,
                        handoff_url=HANDOFF_URL) as running:
        yield running


def generic(server, message: str, session_id: str) -> dict:
    body = json.dumps({"message": message, "session_id": session_id}, ensure_ascii=False).encode()
    response = post(server.base, "/webhooks/generic", content=body, headers=generic_headers(GENERIC_SECRET, body))
    assert response.status_code == 200, response.text
    return response.json()


def test_a_request_for_a_person_gets_the_link_and_no_miss(server) -> None:
    session = f"s-{uuid.uuid4().hex[:8]}"
    data = generic(server, "我要投诉找人工", session)
    assert data["handoff"] is True and data["handoff_reason"] == "asked" and data["miss_id"] is None
    assert data["reply"] == f"好的，正在为您转接人工客服，请稍候。\n\n人工客服：{HANDOFF_URL}"
    assert server.misses("generic", session) == []


def test_related_questions_are_appended_as_a_numbered_list(server) -> None:
    data = generic(server, "可以开票吗", f"s-{uuid.uuid4().hex[:8]}")
    assert data["related_source"] == "kb"
    assert data["reply"] == ("支持。下单后在“我的订单”中申请电子发票即可。\n\n相关问题：\n1. 会员积分有什么用？\n"
                             "2. 下单后多久发货？")
    user = f"staff-{uuid.uuid4().hex[:8]}"
    response = post(server.base, "/webhooks/dingtalk", headers=dingtalk_headers(DINGTALK_SECRET),
                    content=dingtalk_body(user=user, text="怎么退货", msg_id=f"msg-{uuid.uuid4().hex[:8]}"))
    assert response.status_code == 200, response.text
    text = response.json()["markdown"]["text"]
    assert "相关问题：  \n1. 怎么换货？  \n2. 退款多久能到账？" in text


def test_each_webhook_answers_with_its_own_channels_answer(server) -> None:
    assert generic(server, "什么时候发货", f"s-{uuid.uuid4().hex[:8]}")["reply"].startswith("现货商品 48 小时内发货。")
    user = f"staff-{uuid.uuid4().hex[:8]}"
    response = post(server.base, "/webhooks/dingtalk", headers=dingtalk_headers(DINGTALK_SECRET),
                    content=dingtalk_body(user=user, text="什么时候发货", msg_id=f"msg-{uuid.uuid4().hex[:8]}"))
    assert response.json()["markdown"]["text"].startswith("**现货** 48 小时内发货。")
