"""Welcome suggestions (猜你想问): the week's most answered FAQs by their own question, topped up from the KB."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from bot.matcher import Matcher
from bot.store import Store
from bot.suggestions import Suggestions
from faq import FAQ, KnowledgeBase
from index.faq_index import build_index
from tests.test_confidence import CharEncoder

KB = KnowledgeBase(faqs=(
    FAQ(id="invoice", question="怎么开发票", answer="在订单页申请电子发票"),
    FAQ(id="refund", question="退款多久到账", answer="三个工作日内原路退回"),
    FAQ(id="ship", question="什么时候发货", answer="下单后四十八小时内发货"),
    FAQ(id="old_sale", question="双十一活动怎么参加", answer="活动已结束", valid_to=date(2020, 11, 12)),
))


def test_most_answered_first_then_the_kb_in_order_never_an_expired_faq(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'faqbot.db'}")
    index = build_index(KB, CharEncoder())
    matcher = Matcher(index, clock=lambda: datetime(2026, 12, 3, tzinfo=UTC))
    for faq_id, times in (("ship", 3), ("refund", 1), ("old_sale", 5), ("gone", 9)):
        for _ in range(times):
            store.log_chat(channel="web", session_id=None, matched=True, faq_id=faq_id, similarity=0.99, miss_id=None)
    store.log_chat(channel="web", session_id=None, matched=False, faq_id=None, similarity=0.5, miss_id=None)
    got = Suggestions(store).for_matcher(matcher, 3)
    assert [(s.faq_id, s.source) for s in got] == [("ship", "asked"), ("refund", "asked"), ("invoice", "kb")]
    assert got[0].question == "什么时候发货"  # the FAQ's own question, never a customer's wording
    # An empty log: the KB's first FAQs that may be offered now.
    fresh = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    assert [s.faq_id for s in Suggestions(fresh).for_matcher(matcher, 5)] == ["invoice", "refund", "ship"]
    # Counted once a minute per index version: the same version reads the count it made, a new one recounts.
    counted = Suggestions(store)
    assert [s.faq_id for s in counted.for_matcher(matcher, 3)] == ["ship", "refund", "invoice"]
    for _ in range(2):
        store.log_chat(channel="web", session_id=None, matched=True, faq_id="invoice", similarity=0.99, miss_id=None)
    assert [s.faq_id for s in counted.for_matcher(matcher, 3)] == ["ship", "refund", "invoice"]
    rebuilt = Matcher(build_index(KB, CharEncoder()), clock=lambda: datetime(2026, 12, 3, tzinfo=UTC))
    assert [s.faq_id for s in counted.for_matcher(rebuilt, 3)] == ["ship", "invoice", "refund"]
