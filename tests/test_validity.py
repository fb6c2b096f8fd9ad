"""Validity windows: `valid_from` / `valid_to` in the YAML (dates or ISO datetimes, read in FAQBOT_TIMEZONE),
an FAQ outside its window neither answered nor offered (decided per question, no rebuild), and `faqbot lint`
flagging what expired or expires within a week."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from admin.cli.main import main
from admin.curation.lint import validity_findings
from faq import KBError, load_kb
from tests.conftest import TINY_KB, serve_kb_text
from tests.desk_kb import DESK_KB

SHANGHAI = ZoneInfo("Asia/Shanghai")


def with_window(text: str, tags_line: str, window: str) -> str:
    """`text` with `window` (YAML lines) added to the FAQ whose tags line is `tags_line`."""
    assert tags_line in text
    return text.replace(tags_line, tags_line + window)


def test_dates_and_datetimes_load_and_change_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    window = ("    valid_from: 2026-06-01\n    valid_to: '2026-06-30'\n")
    path.write_text(with_window(TINY_KB, "    tags: [shipping]\n", window)
                    .replace("    tags: [billing]\n", "    tags: [billing]\n    valid_from: 2026-06-18T20:00:00+08:00\n"
                             "    valid_to: 2026-06-19 02:00\n"), encoding="utf-8")
    kb = load_kb(path)
    shipping, invoice = kb.by_id()["shipping_time"], kb.by_id()["invoice"]
    assert (shipping.valid_from, shipping.valid_to) == (date(2026, 6, 1), date(2026, 6, 30))
    assert invoice.valid_from == datetime(2026, 6, 18, 20, tzinfo=invoice.valid_from.tzinfo)
    assert invoice.valid_to == datetime(2026, 6, 19, 2)  # no offset: read in FAQBOT_TIMEZONE when answering
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY_KB, encoding="utf-8")
    later = tmp_path / "later.yaml"
    later.write_text(with_window(TINY_KB, "    tags: [shipping]\n", "    valid_to: 2026-07-31\n"), encoding="utf-8")
    assert len({load_kb(p).content_hash for p in (path, plain, later)}) == 3


def test_a_day_lasts_to_its_end_in_the_configured_zone(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    path.write_text(with_window(TINY_KB, "    tags: [shipping]\n", "    valid_from: 2026-06-01\n    valid_to: 2026-06-30\n"),
                    encoding="utf-8")
    faq = load_kb(path).by_id()["shipping_time"]
    assert not faq.offered_at(datetime(2026, 5, 31, 15, 59, tzinfo=UTC), SHANGHAI)  # 23:59 on 31 May in Shanghai
    assert faq.offered_at(datetime(2026, 5, 31, 16, 0, tzinfo=UTC), SHANGHAI)       # 00:00 on 1 June
    assert faq.offered_at(datetime(2026, 6, 30, 15, 59, tzinfo=UTC), SHANGHAI)      # 23:59 on 30 June
    assert not faq.offered_at(datetime(2026, 6, 30, 16, 0, tzinfo=UTC), SHANGHAI)
    assert faq.offered_at(datetime(2026, 6, 30, 16, 0, tzinfo=UTC), UTC)           # still 30 June in UTC


def test_bad_values_and_a_window_that_ends_before_it_starts_are_located(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    path.write_text(with_window(TINY_KB, "    tags: [shipping]\n", "    valid_from: 2026-06-30\n    valid_to: 2026-06-01\n")
                    .replace("    tags: [billing]\n", "    tags: [billing]\n    valid_from: next week\n"), encoding="utf-8")
    with pytest.raises(KBError) as caught:
        load_kb(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:11: faqs[invoice].valid_from: expected a date (2026-01-31) or an ISO datetime "
        "(2026-01-31T18:00:00+08:00), got str 'next week'",
        f"{path}:27: faqs[shipping_time].valid_to: 2026-06-01 is before valid_from 2026-06-30",
    ]


@pytest.mark.slow
def test_the_decision_reads_the_clock_not_the_index(make_settings, bundled_encoder, tmp_path: Path) -> None:
    """One index, two instants: the FAQ is answered inside its window and neither answered nor offered after it."""
    from bot.matcher import Matcher
    from bot.service import FaqService, ensure_index

    kb = tmp_path / "kb-window"
    kb.mkdir()
    (kb / "faq.yaml").write_text(with_window(TINY_KB, "    tags: [shipping]\n", "    valid_to: 2026-06-30\n"),
                                 encoding="utf-8")
    settings = make_settings(kb=kb)
    service = FaqService(settings, encoder=bundled_encoder)
    index = ensure_index(settings, bundled_encoder)
    service.use_index(index)
    vectors = service.encode_queries(["什么时候发货"])
    inside = Matcher(index, timezone=SHANGHAI, clock=lambda: datetime(2026, 6, 30, 12, tzinfo=UTC))
    after = Matcher(index, timezone=SHANGHAI, clock=lambda: datetime(2026, 6, 30, 16, tzinfo=UTC))
    decided = inside.match_vectors(vectors, ["什么时候发货"])[0]
    assert decided.matched and decided.faq.id == "shipping_time"
    expired = after.match_vectors(vectors, ["什么时候发货"], top_k=5)[0]
    assert not expired.matched and expired.confidence is None  # the model judged an FAQ that is gone
    assert "shipping_time" not in [c.faq_id for c in expired.candidates] and expired.candidates


def shanghai_today() -> date:
    return datetime.now(SHANGHAI).date()


@pytest.fixture(scope="module")
def windowed(tmp_path_factory, bundled_encoder) -> Iterator[str]:
    """The desk KB served with shipping_time expired yesterday and member_points starting tomorrow."""
    today = shanghai_today()
    text = with_window(DESK_KB, "    tags: [shipping]\n", f"    valid_to: {today - timedelta(days=1)}\n")
    text = with_window(text, "    tags: [membership]\n", f"    valid_from: {today + timedelta(days=1)}\n")
    text = with_window(text, "    tags: [billing]\n", f"    valid_from: {today - timedelta(days=1)}\n"
                                                      f"    valid_to: {today + timedelta(days=30)}\n")
    with serve_kb_text(tmp_path_factory.mktemp("validity"), text, bundled_encoder) as base:
        yield base


def chat(base: str, message: str) -> dict:
    response = httpx.post(f"{base}/chat", json={"message": message, "top_k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_outside_its_window_an_faq_is_not_answered_nor_offered(windowed: str) -> None:
    for question, gone in [("什么时候发货", "shipping_time"), ("积分可以抵现吗", "member_points")]:
        body = chat(windowed, question)
        assert body["matched"] is False and body["faq_id"] != gone, question
        assert gone not in [a["faq_id"] for a in body["alternatives"]] + [c["faq_id"] for c in body.get("clarify", [])]
        assert isinstance(body["miss_id"], int)
    invoice = chat(windowed, "可以开票吗")
    assert invoice["matched"] and invoice["faq_id"] == "invoice"
    # Its own related list names only FAQs outside their windows: the nearest that are inside fill in.
    assert not {"member_points", "shipping_time"} & {r["faq_id"] for r in invoice["related"]}
    assert invoice["related_source"] != "kb"


@pytest.mark.slow
def test_lint_flags_expired_and_soon_expiring_faqs(tmp_path: Path, capsys, bundled_encoder) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    now = datetime(2026, 6, 10, 4, tzinfo=UTC)  # noon in Shanghai
    text = with_window(TINY_KB, "    tags: [shipping]\n", "    valid_to: 2026-06-09\n")
    text = with_window(text, "    tags: [billing]\n", "    valid_to: 2026-06-16\n")
    text = with_window(text, "    tags: [membership]\n", "    valid_to: 2026-06-18\n")  # 8 days: not yet
    (kb / "faq.yaml").write_text(text, encoding="utf-8")
    found = validity_findings(load_kb(kb), now=now, tz=SHANGHAI)
    assert [(v["faq_id"], v["ends_at"]) for v in found["expired"]] == [("shipping_time", "2026-06-10T00:00:00+08:00")]
    assert [(v["faq_id"], v["days_left"]) for v in found["expiring"]] == [("invoice", 6.5)]

    today = shanghai_today()
    text = with_window(TINY_KB, "    tags: [shipping]\n", f"    valid_to: {today - timedelta(days=2)}\n")
    text = with_window(text, "    tags: [billing]\n", f"    valid_to: {today + timedelta(days=3)}\n")
    (kb / "faq.yaml").write_text(text, encoding="utf-8")
    code = main(["lint", "--kb", str(kb), "--data-dir", str(tmp_path / "var")])
    out = capsys.readouterr().out
    assert code == 0
    assert f"expired: shipping_time ({kb / 'faq.yaml'}:19) ended {today - timedelta(days=1)}T00:00:00+08:00" in out
    assert f"expiring: invoice ({kb / 'faq.yaml'}:4) ends {today + timedelta(days=4)}T00:00:00+08:00" in out
