"""Handoff to a person: the phrases, the KB's own phrases, two misses in a row, the stats, the webhooks.

On a real uvicorn (loopback, free port), a real SQLite file and the bundled encoder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.handoff import HandoffPhrases
from faq import KBError, load_kb
from tests.conftest import TINY_KB, serve_app

TOKEN = "handoff-test-token-0123"
HANDOFF_URL = "https://kefu.example.com/im"
KB_WITH_PHRASES = TINY_KB.replace("version: 1\n", "version: 1\ndefaults:\n  handoff_phrases: [找个活人, 叫你们经理来]\n")
WEATHER = ["明天上海会下雨吗", "今天股市行情怎么样", "周末北京天气如何"]


@pytest.mark.parametrize("message", ["转人工", "人工客服", "找真人", "人工服务", "我要投诉找人工", "人工！", "转人工，谢谢",
                                     "Ｒｅｎｇｏｎｇ 转 人工"])
def test_builtin_phrases_ask_for_a_person(message: str) -> None:
    assert HandoffPhrases().asks_for_person(message)


@pytest.mark.parametrize("message", ["人工智能是什么", "怎么退货", "真人秀在哪看", "可以开票吗"])
def test_ordinary_questions_do_not(message: str) -> None:
    assert not HandoffPhrases().asks_for_person(message)


def test_kb_phrases_extend_the_list_and_the_hash(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY_KB, encoding="utf-8")
    extended = tmp_path / "extended.yaml"
    extended.write_text(KB_WITH_PHRASES, encoding="utf-8")
    kb = load_kb(extended)
    assert kb.handoff_phrases == ("找个活人", "叫你们经理来")
    assert kb.content_hash != load_kb(plain).content_hash
    phrases = HandoffPhrases(kb.handoff_phrases)
    assert phrases.asks_for_person("能不能找个活人") and not HandoffPhrases().asks_for_person("能不能找个活人")

    broken = tmp_path / "broken.yaml"
    broken.write_text(TINY_KB.replace("version: 1\n", "version: 1\ndefaults:\n  handoff_phrases: 转人工\n"),
                      encoding="utf-8")
    with pytest.raises(KBError) as caught:
        load_kb(broken)
    assert [str(p) for p in caught.value.problems] == [
        f"{broken}:4: defaults.handoff_phrases: expected a list, got str '转人工'"]


@pytest.fixture
def desk(tmp_path: Path, bundled_encoder) -> Iterator[tuple[str, Path]]:
    """The full app on a KB with its own handoff phrases, the 转人工 link set; (base URL, SQLite file)."""
    from admin.web.app import build_app
    from bot.settings import Settings

    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(KB_WITH_PHRASES, encoding="utf-8")
    settings = Settings(kb=kb, data_dir=tmp_path / "var", admin_token=TOKEN, handoff_url=HANDOFF_URL)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        yield base, tmp_path / "var" / "faqbot.db"


def chat(base: str, message: str, session_id: str | None = None, channel: str = "web") -> dict:
    response = httpx.post(f"{base}/chat", json={"message": message, "session_id": session_id, "channel": channel},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_asking_for_a_person_is_a_handoff_not_a_miss(desk) -> None:
    base, db = desk
    for message in ["转人工", "我要投诉找人工", "能不能找个活人"]:
        body = chat(base, message, "s-ask")
        assert body["handoff"] is True and body["handoff_reason"] == "asked", message
        assert body["handoff_url"] == HANDOFF_URL
        assert body["matched"] is False and body["miss_id"] is None
        assert body["answer"] == "好的，正在为您转接人工客服，请稍候。"
    answered = chat(base, "可以开票吗", "s-ask")
    assert answered["matched"] is True and answered["handoff"] is False and "handoff_url" not in answered
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM misses").fetchone() == (0,)


@pytest.mark.slow
def test_two_misses_in_a_row_offer_the_handoff(desk) -> None:
    base, db = desk
    first = chat(base, WEATHER[0], "s-miss")
    assert first["matched"] is False and first["handoff"] is False and isinstance(first["miss_id"], int)
    second = chat(base, WEATHER[1], "s-miss")
    assert second["handoff"] is True and second["handoff_reason"] == "offered"
    assert second["answer"] == first["answer"] and isinstance(second["miss_id"], int)  # still a miss, logged
    assert second["handoff_url"] == HANDOFF_URL
    # Another session's first miss is no second miss; an answer in between breaks the run.
    assert chat(base, WEATHER[2], "s-other")["handoff"] is False
    assert chat(base, "可以开票吗", "s-other")["matched"] is True
    assert chat(base, WEATHER[0], "s-other")["handoff"] is False
    # No session id: nothing to count in a row.
    assert chat(base, WEATHER[0])["handoff"] is False and chat(base, WEATHER[1])["handoff"] is False
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT handoff, COUNT(*) FROM chat_log GROUP BY handoff ORDER BY handoff").fetchall()
    assert rows == [(None, 6), ("offered", 1)]


@pytest.mark.slow
def test_stats_count_handoffs_by_day_and_by_the_faq_answered_before(desk) -> None:
    base, _ = desk
    chat(base, "可以开票吗", "a")          # invoice answered ...
    chat(base, "转人工", "a")              # ... then a person asked for: after invoice
    chat(base, "怎么退货", "b")
    chat(base, WEATHER[0], "b")
    chat(base, WEATHER[1], "b")            # offered after two misses: the FAQ answered before is return_howto
    chat(base, "人工客服", "c")            # asked with nothing answered before
    chat(base, "人工客服")                 # no session at all
    response = httpx.get(f"{base}/admin/stats", params={"tz": "Asia/Shanghai", "days": 2},
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["totals"]["handoffs"] == 4
    assert data["days"][-1]["handoffs"] == 4 and data["days"][0]["handoffs"] == 0
    # Requests for a person no FAQ answered are neither questions nor misses.
    assert data["totals"]["questions"] == 4 and data["totals"]["misses"] == 2
    assert data["handoffs"]["by_kind"] == {"asked": 3, "offered": 1}
    after = {row["faq_id"]: row for row in data["handoffs"]["after_faq"]}
    assert after["invoice"] == {"faq_id": "invoice", "question": "是否支持开具发票？", "count": 1, "asked": 1,
                                "offered": 0}
    assert after["return_howto"]["offered"] == 1 and after["return_howto"]["count"] == 1
    assert after[None]["asked"] == 2


@pytest.mark.slow
def test_a_second_process_sees_the_first_miss_in_the_chat_log(make_settings, bundled_encoder) -> None:
    """Another worker answered the first miss: this process has never seen the session, the database has."""
    from bot.service import FaqService, ensure_index

    settings = make_settings(threshold=0.93)
    first = FaqService(settings, encoder=bundled_encoder)
    first.use_index(ensure_index(settings, bundled_encoder))
    assert first.chat(WEATHER[0], session_id="shared").handoff is None
    second = FaqService(settings, encoder=bundled_encoder)
    second.use_index(first.index)
    result = second.chat(WEATHER[1], session_id="shared")
    assert result.handoff == "offered" and not result.decision.matched and result.miss_id is not None


@pytest.mark.slow
def test_an_faq_that_answers_the_request_is_given_with_the_handoff(make_settings, bundled_encoder, tmp_path) -> None:
    """A KB often has "怎么联系人工客服？" with "转人工" among its paraphrases: its answer, and a person offered."""
    from bot.service import FaqService, ensure_index

    kb = tmp_path / "kb-contact"
    kb.mkdir()
    (kb / "faq.yaml").write_text(TINY_KB + "  - id: contact\n    question: 怎么联系人工客服？\n"
                                 "    paraphrases: [转人工, 我要找真人客服]\n    answer: 客服热线 400-800-1234。\n",
                                 encoding="utf-8")
    settings = make_settings(kb=kb, handoff_url=HANDOFF_URL)
    service = FaqService(settings, encoder=bundled_encoder)
    service.use_index(ensure_index(settings, bundled_encoder))
    from bot.api import chat_response

    result = service.chat("转人工", session_id="s-contact")
    body = chat_response(result, service)
    assert body["matched"] is True and body["faq_id"] == "contact" and body["answer"] == "客服热线 400-800-1234。"
    assert body["handoff"] is True and body["handoff_reason"] == "asked" and body["handoff_url"] == HANDOFF_URL
    assert result.miss_id is None and service.store.count_misses() == 0
