"""The KB loader: valid files load; every kind of mistake names its file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from faq import KBError, load_kb
from faq.loader import KBProblem
from tests.conftest import TINY_KB


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[KBProblem]:
    with pytest.raises(KBError) as caught:
        load_kb(path)
    return caught.value.problems


def test_loads_tiny_kb_with_sources_and_lines(tiny_kb: Path) -> None:
    kb = load_kb(tiny_kb)
    assert [f.id for f in kb.faqs] == ["invoice", "return_howto", "shipping_time", "change_password", "member_points"]
    invoice = kb.by_id()["invoice"]
    assert invoice.paraphrases == ("你们的产品能开发票吗？", "可以开票吗")
    assert invoice.tags == ("billing",)
    assert invoice.source == tiny_kb / "faq.yaml"
    assert invoice.line == 4  # the `- id: invoice` line (after a comment and two keys)
    assert len(kb.texts()) == 15


def test_shipped_sample_kb_is_valid_and_large_enough() -> None:
    from bot.settings import SAMPLE_KB

    kb = load_kb(SAMPLE_KB)
    assert len(kb.faqs) >= 40
    assert all(len(f.paraphrases) >= 2 for f in kb.faqs)
    assert "invoice" in kb.by_id()


def test_content_hash_ignores_comments_but_not_answers(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", TINY_KB)
    b = write(tmp_path / "b.yaml", "# another comment\n" + TINY_KB)
    assert load_kb(a).content_hash == load_kb(b).content_hash
    c = write(tmp_path / "c.yaml", TINY_KB.replace("48 小时内发货", "24 小时内发货"))
    assert load_kb(c).content_hash != load_kb(a).content_hash


def test_every_problem_is_reported_with_file_line_field(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """\
        version: 1
        faqs:
          - id: ok_one
            question: 第一个问题
            answer: 回答
          - id: "bad id!"
            question: 问题
            answer: 回答
          - id: no_answer
            question: 没有回答的问题
          - id: empty_question
            question: "  "
            answer: 回答
          - id: unknown_key
            question: 问题二
            answer: 回答
            colour: red
          - id: wrong_type
            question: 问题三
            answer: 回答
            paraphrases: 不是列表
          - id: ok_one
            question: 重复的 id
            answer: 回答
        """,
    )
    found = {(p.line, p.field) for p in problems_of(bad)}
    assert (6, "faqs[bad id!].id") in found
    assert (9, "faqs[no_answer].answer") in found
    assert (12, "faqs[empty_question].question") in found
    assert (17, "faqs[unknown_key].colour") in found
    assert (21, "faqs[wrong_type].paraphrases") in found
    assert (22, "id") in found  # the duplicate, pointing back at the first definition
    messages = " ".join(str(p) for p in problems_of(bad))
    assert "bad.yaml:22: id: duplicate id 'ok_one' (first defined at" in messages


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "version: 1\nfaqs:\n  - id: x\n    question: 问\n    answer: 答\n")
    write(tmp_path / "b.yaml", "version: 1\nfaqs:\n  - id: x\n    question: 问二\n    answer: 答二\n")
    (problem,) = problems_of(tmp_path)
    assert problem.file.endswith("b.yaml") and problem.line == 3 and "a.yaml:3" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("version: 1\nfaqs: [\n", 3, "-", "YAML syntax error"),
        ("faqs: []\n", 1, "version", "missing"),
        ("version: 2\nfaqs: []\n", 1, "version", "unsupported"),
        ("version: 1\nfaqs:\n  - !!python/object:os.system\n    id: x\n", 3, "faqs[x]", "unsupported tag"),
        ("version: 1\nfaqs:\n  - id: x\n    question: !!python/name:os.system\n    answer: a\n", 4, "faqs[x].question",
         "unsupported tag"),
        ("version: 1\nfaqs:\n  - id: x\n    question: q\n    answer: a\n    threshold: 3\n", 6, "faqs[x].threshold",
         "between 0 and 1"),
        ("version: 1\ndefaults:\n  threshold: nope\nfaqs: []\n", 3, "defaults.threshold", "expected a number"),
        ("- just\n- a list\n", 1, "-", "expected a mapping"),
    ],
)
def test_single_problems(tmp_path: Path, text: str, line: int, field: str, words: str) -> None:
    problems = problems_of(write(tmp_path / "kb.yaml", text))
    assert any(p.line == line and p.field == field and words in p.message for p in problems), problems


def test_billion_laughs_is_rejected_cheaply(tmp_path: Path) -> None:
    lines = ["version: 1", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("faqs:\n  - id: x\n    question: q\n    answer: a\n    paraphrases: *a8")
    problems = problems_of(write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n"))
    assert any(p.field == "a0" and "unknown key" in p.message for p in problems)
    assert any(p.field.startswith("faqs[x].paraphrases") for p in problems)


def test_non_utf8_and_missing_paths(tmp_path: Path) -> None:
    path = tmp_path / "gbk.yaml"
    path.write_bytes("version: 1\nfaqs: []\n# 中文".encode("gbk"))
    (problem,) = problems_of(path)
    assert "not UTF-8" in problem.message
    (problem,) = problems_of(tmp_path / "missing.yaml")
    assert "no such file" in problem.message


def test_tests_yaml_beside_the_kb_is_not_part_of_it(tiny_kb: Path) -> None:
    write(tiny_kb / "tests.yaml", "version: 1\ntests:\n  - query: 能开发票吗\n    expected: invoice\n")
    assert len(load_kb(tiny_kb).faqs) == 5
