"""What the customer-service desk features look like through the webhooks (real server, signed deliveries)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.channels_platforms import GENERIC_SECRET, channel_server, generic_headers, post

pytestmark = pytest.mark.slow
HANDOFF_URL = "https://kefu.example.com/im"


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_encoder):
    with channel_server(tmp_path_factory.mktemp("desk"), bundled_encoder, handoff_url=HANDOFF_URL) as running:
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
