"""Per-channel answers: `channel_answers` in the YAML, checked against the known channels; /chat's
`channel` and `faqbot ask` pick theirs (webhooks: tests/test_desk_channels.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bot.channels import CHANNEL_TYPES
from faq import KBError, load_kb
from faq.schema import KNOWN_CHANNELS
from tests.conftest import TINY_KB, serve_app
from tests.desk_kb import DESK_KB

DEFAULT = "现货商品 48 小时内发货。"


def test_every_channel_faqbot_has_is_a_known_channel() -> None:
    assert {c.name for c in CHANNEL_TYPES} | {"web", "cli"} == set(KNOWN_CHANNELS)


def test_channel_answers_load_and_change_the_hash(tmp_path: Path) -> None:
    desk = tmp_path / "desk.yaml"
    desk.write_text(DESK_KB, encoding="utf-8")
    shipping = load_kb(desk).by_id()["shipping_time"]
    assert shipping.answer == DEFAULT
    assert shipping.answer_for("dingtalk") == "**现货** 48 小时内发货。"
    assert shipping.answer_for("slack") == DEFAULT and shipping.answer_for("test") == DEFAULT
    one = tmp_path / "one.yaml"
    one.write_text(TINY_KB.replace("    tags: [shipping]\n", "    tags: [shipping]\n    channel_answers: {wecom: 甲}\n"),
                   encoding="utf-8")
    two = tmp_path / "two.yaml"
    two.write_text(TINY_KB.replace("    tags: [shipping]\n", "    tags: [shipping]\n    channel_answers: {wecom: 乙}\n"),
                   encoding="utf-8")
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY_KB, encoding="utf-8")
    assert len({load_kb(p).content_hash for p in (one, two, plain)}) == 3


def test_unknown_channels_and_bad_answers_are_located(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    path.write_text(TINY_KB.replace("    tags: [shipping]\n", "    tags: [shipping]\n    channel_answers:\n"
                                    "      weixin: 拼错了\n      wecom: ''\n      slack: [a, b]\n"), encoding="utf-8")
    with pytest.raises(KBError) as caught:
        load_kb(path)
    found = [str(p) for p in caught.value.problems]
    assert found[0].startswith(f"{path}:26: faqs[shipping_time].channel_answers.weixin: unknown key 'weixin' (allowed: cli, ")
    assert found[1:] == [f"{path}:27: faqs[shipping_time].channel_answers.wecom: must not be empty",
                         f"{path}:28: faqs[shipping_time].channel_answers.slack: expected text, got a list"]


@pytest.mark.slow
def test_chat_and_ask_pick_their_channels_answer(tmp_path: Path, bundled_encoder) -> None:
    from admin.web.app import build_app
    from bot.service import FaqService, ensure_index
    from bot.settings import Settings

    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "faq.yaml").write_text(DESK_KB, encoding="utf-8")
    settings = Settings(kb=tmp_path / "kb", data_dir=tmp_path / "var")
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        def answer(channel: str | None) -> str:
            body = {"message": "什么时候发货"} | ({"channel": channel} if channel else {})
            reply = httpx.post(f"{base}/chat", json=body, timeout=30).json()
            assert reply["faq_id"] == "shipping_time"
            return reply["answer"]

        assert answer(None) == answer("web") == "现货商品 48 小时内发货，可在[我的订单](https://shop.example.com/orders)查看物流。"
        assert answer("wecom") == "现货 48 小时内发货，可在企业微信工作台查看物流。"
        assert answer("telegram") == answer("kiosk") == DEFAULT
    service = FaqService(settings, encoder=bundled_encoder)
    service.use_index(ensure_index(settings, bundled_encoder))
    assert service.chat("什么时候发货", channel="cli", log_turn=False).answer == DEFAULT
    assert service.chat("什么时候发货", channel="dingtalk", log_turn=False).answer == "**现货** 48 小时内发货。"
