"""Evaluation figures equal hand-computed values; `faqbot eval` runs the real matcher and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from admin.cli.main import main
from admin.quality.evaluation import (
    EvalDataError,
    EvalQuery,
    LabelledPair,
    ScoredQueries,
    best_threshold_accuracy,
    decide_all,
    evaluate_faq,
    evaluate_pairs,
    load_pairs,
    load_queries,
    margin_analysis,
    ranking_metrics,
    recommended_margin,
    roc_auc,
    spearman,
    sweep_thresholds,
)
from bot.matcher import Matcher
from faq import FAQ, KnowledgeBase, load_kb
from index.calibration import Calibration
from index.faq_index import build_index


class TableEncoder:
    """A tiny hand-made model: each text has a fixed 2-d direction, so every cosine is known by hand."""

    name = "table"
    dim = 2
    fingerprint = "table:test"

    def __init__(self, angles: dict[str, float]) -> None:
        self.angles = angles

    def encode_queries(self, texts):
        # FAQ answers are not placed by hand: they point away from everything (the index encodes them too).
        angles = [self.angles.get(t, 180.0) for t in texts]
        return np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles],
                        dtype=np.float32).reshape(len(texts), 2)

    encode_passages = encode_queries


def cos_deg(degrees: float) -> float:
    return float(np.cos(np.radians(degrees)))


# FAQs at 0, 40 and 80 degrees; queries placed by hand.
ANGLES = {"A": 0.0, "B": 40.0, "C": 80.0,
          "q_a_near": 10.0,    # A (cos 10°), B second (cos 30°)
          "q_b_mid": 25.0,     # B at 15°, A at 25°: right but close to A
          "q_c_far": 55.0,     # expected C: B at 15° wins -> top-1 wrong, C rank 2 (cos 25°)
          "q_out": 120.0,      # out of scope: C at 40°
          "q_out_near": 78.0}  # out of scope but C at 2°: answered wrongly unless the threshold is above cos 2°


def hand_kb() -> KnowledgeBase:
    return KnowledgeBase(faqs=tuple(FAQ(id=x.lower(), question=x, answer=f"answer {x}") for x in "ABC"))


HAND_QUERIES = [EvalQuery("q_a_near", "a"), EvalQuery("q_b_mid", "b"), EvalQuery("q_c_far", "c"),
                EvalQuery("q_out", None), EvalQuery("q_out_near", None)]


def test_ranking_metrics_by_hand():
    top1, mrr, recall5 = ranking_metrics([1, 2, None, 5, 7])
    assert top1 == pytest.approx(1 / 5)
    assert mrr == pytest.approx((1 + 1 / 2 + 0 + 1 / 5 + 1 / 7) / 5)
    assert recall5 == pytest.approx(3 / 5)


def test_pair_metrics_by_hand():
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3: of 6 (pos, neg) orderings 5 are right.
    scores, labels = [0.9, 0.8, 0.4, 0.7, 0.3], [1, 1, 1, 0, 0]
    assert roc_auc(scores, labels) == pytest.approx(5 / 6)
    threshold, accuracy = best_threshold_accuracy(scores, labels)
    # cutting between 0.8 and 0.7 gets 4 of 5 right (only the 0.4 positive is missed); no cut does better
    assert accuracy == pytest.approx(4 / 5)
    assert threshold == pytest.approx(0.75)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks x = 1, 2.5, 2.5, 4 and y = 1, 2, 3, 4
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


def test_evaluate_pairs_graded_and_binary():
    pairs = [LabelledPair(str(i), str(i), float(label)) for i, label in enumerate([5, 4, 1, 0])]
    graded = evaluate_pairs(np.array([0.99, 0.95, 0.9, 0.8]), pairs)
    assert graded.kind == "graded" and graded.spearman == pytest.approx(1.0) and graded.roc_auc is None
    binary = evaluate_pairs(np.array([0.9, 0.8, 0.4, 0.7, 0.3]),
                            [LabelledPair("a", "b", float(x)) for x in (1, 1, 1, 0, 0)],
                            calibration=Calibration((0.0, 1.0), (0.0, 100.0)))
    assert binary.kind == "binary" and binary.roc_auc == pytest.approx(5 / 6)
    assert binary.median_percent_positive == pytest.approx(80.0)
    assert binary.median_percent_negative == pytest.approx(50.0)


def test_evaluate_faq_equals_hand_computed_values():
    encoder = TableEncoder(ANGLES)
    threshold = cos_deg(12)
    result = evaluate_faq(encoder, hand_kb(), HAND_QUERIES, threshold=threshold, margin=0.0)
    # ranks of the expected FAQ: 1, 1, 2 (in scope)
    assert result.top1 == pytest.approx(2 / 3)
    assert result.mrr10 == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert result.recall5 == pytest.approx(1.0)
    # at cos 12°: q_a_near (10°) answered right; q_b_mid (15°) and q_c_far (15°) not answered;
    # q_out (40°) rejected; q_out_near (2°) answered -> wrong.
    assert result.at_threshold.in_scope_answered_right == pytest.approx(1 / 3)
    assert result.oos_rejection == pytest.approx(1 / 2)
    assert result.overall_accuracy == pytest.approx(2 / 5)
    assert result.at_threshold.precision == pytest.approx(1 / 2)
    # The sweep, by hand: answering everything scores 2/5; a threshold in (cos 40°, cos 15°] rejects q_out
    # and keeps a, b right (c and q_out_near wrong): 3/5, the maximum; higher ones lose b first (2/5).
    assert result.sweep.best_accuracy == pytest.approx(3 / 5)
    assert cos_deg(40) < result.sweep.best_threshold <= cos_deg(40) + 0.001
    # The per-query outcomes are the real Matcher's decisions.
    matcher = Matcher(build_index(hand_kb(), encoder), threshold=threshold, margin=0.0)
    for query_result in result.results:
        vector = encoder.encode_queries([query_result.query])
        assert matcher.match_vectors(vector, [query_result.query])[0].matched == query_result.decision.matched


def test_margin_turns_close_calls_into_clarify_questions():
    encoder = TableEncoder(ANGLES)
    # threshold cos 30°: q_b_mid has B at 15° and A at 25° (gap cos15-cos25 = 0.0597): a margin of 0.07 asks.
    result = evaluate_faq(encoder, hand_kb(), HAND_QUERIES, threshold=cos_deg(30), margin=0.07)
    decision = next(r.decision for r in result.results if r.query == "q_b_mid")
    assert not decision.matched and [c.faq_id for c in decision.clarify] == ["b", "a"]
    assert int(result.at_threshold.clarified.sum()) >= 1


def test_sweep_and_margin_analysis_on_hand_made_scores():
    # Query 1: right best 0.95, runner-up 0.94. Query 2: wrong best 0.93, runner-up (the right one) 0.925.
    # Query 3: out of scope, best 0.91. Query 4: right best 0.97, runner-up 0.80.
    scored = ScoredQueries(
        sims=np.array([[0.95, 0.94], [0.93, 0.925], [0.91, 0.90], [0.97, 0.80]]),
        own_thresholds=np.full((4, 2), np.nan),
        is_expected=np.array([[True, False], [False, True], [False, False], [True, False]]),
        in_scope=np.array([True, True, False, True]),
    )
    outcome = decide_all(scored, 0.92, 0.0)
    assert outcome.answered.tolist() == [True, True, False, True]
    assert outcome.accuracy == pytest.approx(3 / 4)
    assert outcome.precision == pytest.approx(2 / 3)
    sweep = sweep_thresholds(scored, 0.0, thresholds=np.array([0.90, 0.92, 0.94, 0.96, 0.98]))
    assert sweep.accuracy.tolist() == pytest.approx([2 / 4, 3 / 4, 3 / 4, 2 / 4, 1 / 4])
    assert sweep.best_threshold == pytest.approx(0.92)
    assert sweep.precision_threshold == pytest.approx(0.94)
    rows = margin_analysis(scored, 0.92, margins=(0.0, 0.006, 0.02))
    assert [(r.wrong_prevented, r.right_delayed) for r in rows] == [(0, 0), (1, 0), (1, 1)]
    assert rows[1].expected_offered == 1  # the right FAQ is among the choices
    assert recommended_margin(rows) == pytest.approx(0.006)


def test_per_faq_threshold_changes_the_decision():
    encoder = TableEncoder(ANGLES)
    strict_kb = KnowledgeBase(faqs=(FAQ(id="a", question="A", answer="x", threshold=cos_deg(5)),
                                    FAQ(id="b", question="B", answer="y"), FAQ(id="c", question="C", answer="z")))
    queries = [EvalQuery("q_a_near", "a")]
    loose = evaluate_faq(encoder, hand_kb(), queries, threshold=cos_deg(30), margin=0.0)
    strict = evaluate_faq(encoder, strict_kb, queries, threshold=cos_deg(30), margin=0.0)
    assert loose.results[0].decision.matched
    assert not strict.results[0].decision.matched
    assert strict.results[0].decision.threshold == pytest.approx(cos_deg(5))


def test_loaders_name_the_bad_line(tmp_path: Path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "你好", "expected": null}\n\nnot json\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"q.jsonl:3"):
        load_queries(queries)
    golden = tmp_path / "tests.yaml"
    golden.write_text("version: 1\ntests:\n  - query: 能开发票吗\n    expected: invoice\n  - query: 讲个笑话\n"
                      "    expected: null\n", encoding="utf-8")
    assert load_queries(golden) == [EvalQuery("能开发票吗", "invoice"), EvalQuery("讲个笑话", None)]
    golden.write_text("tests:\n  - expected: invoice\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"tests\[0\]"):
        load_queries(golden)
    pairs = tmp_path / "p.tsv"
    pairs.write_text("a\tb\t1\nc\td\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"p.tsv:2"):
        load_pairs(pairs)


def test_faqbot_eval_on_tiny_benchmark(tiny_kb: Path, tmp_path: Path, capsys, bundled_encoder):
    queries = tmp_path / "q.jsonl"
    rows = [("能开发票吗", "invoice"), ("退货怎么弄", "return_howto"), ("多久能发货", "shipping_time"),
            ("密码忘记了", "change_password"), ("今天天气怎么样", None), ("给我讲个笑话", None)]
    queries.write_text("".join(json.dumps({"query": q, "expected": e}, ensure_ascii=False) + "\n" for q, e in rows),
                       encoding="utf-8")
    report_dir = tmp_path / "report"
    code = main(["eval", "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var"), "--queries", str(queries),
                 "--report-dir", str(report_dir), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["faq"]
    assert summary["queries"] == 6 and summary["in_scope"] == 4 and summary["out_of_scope"] == 2
    assert summary["top1"] == 1.0
    # The same figure by hand from the real matcher: what /chat would answer for each query.
    index = build_index(load_kb(tiny_kb), bundled_encoder)
    matcher = Matcher(index)
    decisions = matcher.match_vectors(bundled_encoder.encode_queries([q for q, _ in rows]), [q for q, _ in rows])
    right = sum((d.matched and d.faq.id == e) if e else not d.matched for d, (_, e) in zip(decisions, rows, strict=True))
    assert summary["overall_accuracy"] == pytest.approx(right / len(rows), abs=1e-4)
    assert summary["threshold"] == pytest.approx(index.calibration.threshold, abs=1e-4)
    for name in ("report.md", "similarity_histograms.png", "accuracy_vs_threshold.png"):
        assert (report_dir / name).stat().st_size > 500
    assert (report_dir / "similarity_histograms.png").read_bytes()[:4] == b"\x89PNG"


def test_faqbot_eval_pairs_prints_auc_and_spearman(tmp_path: Path, capsys, bundled_encoder):
    binary = tmp_path / "binary.tsv"
    binary.write_text("怎么退货\t我想退货怎么操作\t1\n怎么退货\t今天天气很好\t0\n可以开发票吗\t能开票吗\t1\n"
                      "可以开发票吗\t红烧肉怎么做\t0\n", encoding="utf-8")
    graded = tmp_path / "graded.tsv"
    graded.write_text("一个男人在弹吉他。\t一个人在弹吉他。\t4\n一个女人在切洋葱。\t一个男人在踢足球。\t0\n"
                      "一只猫在睡觉。\t一只猫正在睡觉。\t5\n", encoding="utf-8")
    code = main(["eval", "--data-dir", str(tmp_path / "var"), "--pairs", str(binary), str(graded)])
    out = capsys.readouterr().out
    assert code == 0
    assert "ROC-AUC 1.000" in out
    assert "Spearman" in out


def test_faqbot_eval_refuses_bad_input(tmp_path: Path, capsys):
    assert main(["eval", "--data-dir", str(tmp_path)]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2]\n", encoding="utf-8")
    assert main(["eval", "--data-dir", str(tmp_path), "--queries", str(bad)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
