"""Follow-up questions: a short message that cannot stand alone is read after the session's last question."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.context import CONTEXT_SECONDS, SessionContext, is_followup
from bot.service import FaqService
from faq import load_kb
from index.calibration import Calibration
from index.faq_index import build_index
from tests.test_confidence import CharEncoder, model

KB = """version: 1
faqs:
  - id: domestic
    question: 国内快递几天能到
    answer: 国内快递一般 2-3 天送达。
  - id: international
    question: 国际快递几天能到
    answer: 国际快递一般 7-15 个工作日。
  - id: invoice
    question: 怎么开发票
    answer: 在订单页申请电子发票。
"""


@pytest.fixture
def service(tmp_path: Path, make_settings) -> FaqService:
    kb = tmp_path / "desk"
    kb.mkdir()
    (kb / "faq.yaml").write_text(KB, encoding="utf-8")
    svc = FaqService(make_settings(kb=kb, max_batch=1), encoder=CharEncoder())
    # 50 at a character cosine of 0.8: a follow-up alone shares too few characters with any question.
    svc.use_index(build_index(load_kb(kb), svc.encoder, calibration=Calibration(confidence=model())))
    return svc


def ask(service: FaqService, message: str, session: str | None = "s1"):
    return asyncio.run(service.achat(message, session_id=session, log_turn=False))


def test_a_followup_is_answered_from_the_sessions_last_question(service: FaqService) -> None:
    first = ask(service, "国内快递几天能到？")
    assert first.decision.matched and first.decision.faq.id == "domestic" and not first.context_used
    alone = ask(service, "那国际的呢", session="other")  # no context in this session: a miss
    assert not alone.decision.matched and not alone.context_used
    follow = ask(service, "那国际的呢")
    assert follow.decision.matched and follow.decision.faq.id == "international" and follow.context_used
    assert follow.message == "那国际的呢"  # the customer's words are what is logged and shown


def test_a_long_question_never_borrows_context(service: FaqService) -> None:
    ask(service, "国内快递几天能到？")
    long = ask(service, "我想问一下你们支持货到付款这种方式吗")
    assert not long.decision.matched and not long.context_used


def test_a_short_unrelated_message_does_not_bring_the_last_answer_back(service: FaqService) -> None:
    assert ask(service, "国内快递几天能到？").decision.faq.id == "domestic"
    weather = ask(service, "今天天气好吗")  # with the last question in front it would read as "domestic" again
    assert not weather.decision.matched and not weather.context_used


def test_context_lives_twenty_minutes_and_is_per_session() -> None:
    now = [1000.0]
    context = SessionContext(clock=lambda: now[0])
    context.remember("a", "国内快递几天能到", "domestic")
    assert context.last("a") == ("国内快递几天能到", "domestic") and context.last("b") is None
    now[0] += CONTEXT_SECONDS + 1
    assert context.last("a") is None
    assert is_followup("还有呢？") and is_followup("要多久") and not is_followup("？") and not is_followup("请问发票抬头写错了怎么办")
