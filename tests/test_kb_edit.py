"""Round-trip KB edits: the diff of an edit is exactly the new lines; comments, order, quoting stay."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from admin.curation.kb_edit import KbEditError, add_faq, add_paraphrases
from bot.errors import http_status
from faq import load_kb
from faq.loader import kb_files

SAMPLE = Path(__file__).resolve().parent.parent / "faq" / "sample"


def added_lines(before: str, after: str) -> list[str]:
    """Lines the edit inserted; fails if it removed or changed any line."""
    diff = list(difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True)))
    removed = [d for d in diff if d.startswith("- ")]
    assert not removed, "".join(removed)
    return [d[2:] for d in diff if d.startswith("+ ")]


@pytest.fixture
def sample_kb(tmp_path: Path) -> Path:
    kb = tmp_path / "kb"
    shutil.copytree(SAMPLE, kb)
    return kb


def test_attach_to_first_and_last_faq_of_every_sample_file_only_inserts_that_line(sample_kb: Path):
    kb = load_kb(sample_kb)
    by_file: dict[Path, list] = {}
    for faq in kb.faqs:
        by_file.setdefault(Path(faq.source), []).append(faq)
    chosen = [faq for faqs in by_file.values() for faq in {faqs[0].id: faqs[0], faqs[-1].id: faqs[-1]}.values()]
    assert len(by_file) == 8
    for i, faq in enumerate(chosen):
        source = Path(faq.source)
        before = source.read_text(encoding="utf-8")
        text = f"新说法第{i}条：{faq.id}"
        edit = add_paraphrases(sample_kb, faq.id, [text])
        assert edit.added == (text,) and edit.formatting_preserved and edit.file == source
        after = source.read_text(encoding="utf-8")
        (line,) = added_lines(before, after)
        assert line.strip() == f"- {text}"
        # It lands right after the FAQ's last paraphrase, inside that FAQ.
        assert load_kb(sample_kb).by_id()[faq.id].paraphrases[-1] == text


def test_blank_lines_and_comments_after_the_list_stay_after_the_new_item(tmp_path: Path):
    kb = tmp_path / "faq.yaml"
    kb.write_text(
        "# 顶部注释\n"
        "version: 1\n"
        "faqs:\n"
        "  - id: a\n"
        "    question: 问题一\n"
        "    answer: 答案一\n"
        "    paraphrases:\n"
        "      - 说法一  # 行尾注释\n"
        "\n"
        "  # 下一条的注释\n"
        "  - id: b\n"
        "    question: '问题二'\n"
        "    answer: \"答案二\"\n"
        "    threshold: null\n",
        encoding="utf-8",
    )
    before = kb.read_text(encoding="utf-8")
    add_paraphrases(kb, "a", ["说法二"])
    after = kb.read_text(encoding="utf-8")
    assert after == before.replace("      - 说法一  # 行尾注释\n", "      - 说法一  # 行尾注释\n      - 说法二\n")

    add_paraphrases(kb, "b", ["问题二的说法"])  # no paraphrases key yet: inserted after `question`
    after_b = kb.read_text(encoding="utf-8")
    assert added_lines(after, after_b) == ["    paraphrases:\n", "      - 问题二的说法\n"]
    assert "    question: '问题二'\n    paraphrases:\n" in after_b
    assert "threshold: null\n" in after_b


def test_flow_style_list_and_indent_without_offset_are_kept(tmp_path: Path):
    kb = tmp_path / "faq.yaml"
    original = "version: 1\nfaqs:\n- id: a\n  question: 问题一\n  paraphrases: [说法一]\n  answer: 答案一\n"
    kb.write_text(original, encoding="utf-8")
    edit = add_paraphrases(kb, "a", ["说法二"])
    assert edit.formatting_preserved
    assert kb.read_text(encoding="utf-8") == original.replace("[说法一]", "[说法一, 说法二]")


def test_texts_already_there_are_skipped_and_other_faqs_texts_refused(sample_kb: Path):
    invoices = sample_kb / "invoices.yaml"
    before = invoices.read_bytes()
    edit = add_paraphrases(sample_kb, "invoice", ["可以开票吗？", "可以开票吗"])
    assert edit.added == () and edit.skipped == ("可以开票吗？",) and not edit.changed
    assert invoices.read_bytes() == before
    with pytest.raises(KbEditError) as refused:
        add_paraphrases(sample_kb, "invoice", ["能开专票吗"])  # a paraphrase of invoice_vat_special
    assert http_status(refused.value) == 409 and "invoice_vat_special" in refused.value.message
    assert invoices.read_bytes() == before
    with pytest.raises(KbEditError) as missing:
        add_paraphrases(sample_kb, "no_such_faq", ["随便问问"])
    assert http_status(missing.value) == 404


def test_new_faq_goes_to_the_named_file_in_its_style(sample_kb: Path):
    invoices = sample_kb / "invoices.yaml"
    before = invoices.read_text(encoding="utf-8")
    edit = add_faq(sample_kb, "invoice_foreign", "可以开外币发票吗？", "不可以，只能开人民币发票。",
                   paraphrases=["能开美元发票吗"], tags=["billing"], file="invoices.yaml")
    assert edit.created and edit.file == invoices
    assert added_lines(before, invoices.read_text(encoding="utf-8")) == [
        "\n",
        "  - id: invoice_foreign\n",
        "    question: 可以开外币发票吗？\n",  # the admin's full-width ？ is kept
        "    paraphrases:\n",
        "      - 能开美元发票吗\n",
        "    answer: 不可以，只能开人民币发票。\n",
        "    tags: [billing]\n",
    ]
    faq = load_kb(sample_kb).by_id()["invoice_foreign"]
    assert faq.tags == ("billing",) and faq.line == edit.line


def test_new_faq_in_a_new_file_and_multiline_answer(sample_kb: Path):
    edit = add_faq(sample_kb, "service_hours", "周末有客服吗", "有。\n周末 9:00–18:00 在线。", file="misc/hours.yaml")
    assert edit.file == sample_kb / "misc" / "hours.yaml"
    assert load_kb(sample_kb).by_id()["service_hours"].answer == "有。\n周末 9:00–18:00 在线。"
    assert edit.file in kb_files(sample_kb)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"faq_id": "invoice"}, 409, "faq_exists"),
        ({"faq_id": "bad id!"}, 422, "bad_id"),
        ({"file": "../outside.yaml"}, 422, "bad_file"),
        ({"file": "tests.yaml"}, 422, "bad_file"),
        ({"file": "notes.txt"}, 422, "bad_file"),
        ({"answer": "   "}, 422, "empty_text"),
        ({"question": "\u200b\x00"}, 422, "empty_text"),
    ],
)
def test_bad_new_faq_requests_change_nothing(sample_kb: Path, kwargs: dict, status: int, code: str):
    snapshot = {p: p.read_bytes() for p in sample_kb.rglob("*")}
    args = {"faq_id": "fresh_id", "question": "一个新问题", "answer": "一个答案", **kwargs}
    with pytest.raises(KbEditError) as refused:
        add_faq(sample_kb, args.pop("faq_id"), args.pop("question"), args.pop("answer"), **args)
    assert (http_status(refused.value), refused.value.code) == (status, code)
    assert {p: p.read_bytes() for p in sample_kb.rglob("*")} == snapshot


def test_edit_of_a_broken_kb_is_refused_with_its_problems(tmp_path: Path):
    kb = tmp_path / "faq.yaml"
    kb.write_text("version: 1\nfaqs:\n  - id: a\n    question: 问题一\n", encoding="utf-8")
    with pytest.raises(KbEditError) as refused:
        add_paraphrases(kb, "a", ["说法"])
    assert refused.value.code == "invalid_kb"
    assert refused.value.details[0]["field"].endswith("answer") and refused.value.details[0]["line"] == 3
