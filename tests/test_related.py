"""Related questions: the YAML field and its checks, /chat's `related` (the FAQ's own list, else its
nearest FAQs), and the round trip of the admin's YAML edits. /chat on a real uvicorn, real SQLite,
the bundled encoder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.curation.kb_edit import add_paraphrases
from faq import KBError, load_kb
from tests.conftest import TINY_KB, serve_kb_text
from tests.desk_kb import DESK_KB


def problems(path: Path, text: str) -> list[str]:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KBError) as caught:
        load_kb(path)
    return [str(p) for p in caught.value.problems]


def test_related_loads_in_yaml_order_across_files_and_changes_the_hash(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DESK_KB.replace(
        "  - id: exchange_howto", "  - id: placeholder\n    question: 占位\n    answer: 占位\n"
        "    related: [exchange_howto]\n  - id: exchange_howto_moved").split("  - id: exchange_howto_moved")[0],
        encoding="utf-8")
    (tmp_path / "b.yaml").write_text("version: 1\nfaqs:\n  - id: exchange_howto\n    question: 怎么换货？\n"
                                     "    answer: 申请售后。\n  - id: refund_time\n    question: 退款多久能到账？\n"
                                     "    answer: 1-3 天。\n    related: [invoice]\n", encoding="utf-8")
    kb = load_kb(tmp_path)
    by_id = kb.by_id()
    assert by_id["invoice"].related == ("member_points", "shipping_time")
    assert by_id["placeholder"].related == ("exchange_howto",) and by_id["refund_time"].related == ("invoice",)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "faq.yaml").write_text(TINY_KB, encoding="utf-8")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "faq.yaml").write_text(TINY_KB.replace("    tags: [billing]\n", "    tags: [billing]\n    related: [return_howto]\n"),
                                      encoding="utf-8")
    assert load_kb(plain).content_hash != load_kb(changed).content_hash


def test_unknown_self_and_repeated_ids_are_located(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    text = TINY_KB.replace("    tags: [billing]\n", "    tags: [billing]\n    related: [nope, invoice, return_howto, return_howto]\n")
    assert problems(path, text) == [
        f"{path}:11: faqs[invoice].related[1]: an FAQ cannot be related to itself",
        f"{path}:11: faqs[invoice].related[3]: 'return_howto' is listed twice",
        f"{path}:11: faqs[invoice].related[0]: unknown FAQ id 'nope'",
    ]
    text = TINY_KB.replace("    tags: [billing]\n", "    tags: [billing]\n    related:\n      - return_howto\n      - nope\n")
    assert problems(path, text) == [f"{path}:13: faqs[invoice].related[1]: unknown FAQ id 'nope'"]
    assert problems(path, TINY_KB.replace("    tags: [billing]\n", "    tags: [billing]\n    related: invoice\n")) == [
        f"{path}:11: faqs[invoice].related: expected a list, got str 'invoice'"]


def test_admin_yaml_edit_round_trips_related_and_its_comment(tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    source = kb_dir / "faq.yaml"
    source.write_text(DESK_KB, encoding="utf-8")
    before = source.read_text(encoding="utf-8")
    edit = add_paraphrases(kb_dir, "invoice", ["发票怎么开"])
    after = source.read_text(encoding="utf-8")
    assert edit.formatting_preserved
    assert after == before.replace("      - 可以开票吗\n", "      - 可以开票吗\n      - 发票怎么开\n")
    assert "    related: [member_points, shipping_time]  # 开票的人常接着问这两个\n" in after
    assert load_kb(kb_dir).by_id()["invoice"].related == ("member_points", "shipping_time")


@pytest.fixture(scope="module")
def desk(tmp_path_factory, bundled_encoder) -> Iterator[str]:
    with serve_kb_text(tmp_path_factory.mktemp("related"), DESK_KB, bundled_encoder) as base:
        yield base


def chat(base: str, message: str) -> dict:
    response = httpx.post(f"{base}/chat", json={"message": message}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_chat_returns_the_faqs_own_related_in_yaml_order_at_most_five(desk: str) -> None:
    body = chat(desk, "可以开票吗")
    assert body["matched"] and body["faq_id"] == "invoice"
    assert body["related"] == [{"faq_id": "member_points", "question": "会员积分有什么用？"},
                               {"faq_id": "shipping_time", "question": "下单后多久发货？"}]
    assert body["related_source"] == "kb"
    many = chat(desk, "积分可以抵现吗")
    assert many["faq_id"] == "member_points" and many["related_source"] == "kb"
    assert [r["faq_id"] for r in many["related"]] == ["invoice", "return_howto", "shipping_time", "change_password",
                                                      "exchange_howto"]


@pytest.mark.slow
def test_without_a_list_the_nearest_faqs_fill_in(desk: str) -> None:
    body = chat(desk, "怎么退货")
    assert body["faq_id"] == "return_howto" and body["related_source"] == "nearest"
    assert [r["faq_id"] for r in body["related"]] == ["exchange_howto", "refund_time"]  # closest first, not itself
    assert 1 <= len(body["related"]) <= 3
    lonely = chat(desk, "怎么修改登录密码")
    assert lonely["faq_id"] == "change_password"
    assert lonely["related"] == [] and lonely["related_source"] is None  # nothing modestly similar


@pytest.mark.slow
def test_an_unanswered_question_has_no_related(desk: str) -> None:
    body = chat(desk, "明天上海会下雨吗")
    assert body["matched"] is False and body["related"] == [] and body["related_source"] is None


def test_closest_matches_a_stable_full_sort_with_ties() -> None:
    """The partition that picks an answer's nearest FAQs gives exactly the stable sort's order, ties included."""
    import numpy as np

    from bot.related import NEAREST_POOL, _closest

    rng = np.random.default_rng(7)
    for trial in range(500):
        n = int(rng.integers(1, 40))
        cosines = (rng.integers(0, 4, n) / 4 if trial % 2 else rng.random(n)).astype(np.float32)
        cosines[rng.integers(0, n)] = -np.inf  # the FAQ itself
        expected = np.argsort(-cosines, kind="stable")[:NEAREST_POOL]
        assert _closest(cosines, NEAREST_POOL).tolist() == expected.tolist()
