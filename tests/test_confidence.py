"""The decision by confidence: lexical scores, the confidence model, the matcher's rule precedence,
the answers' evidence, stored indexes, and the fit and its leave-one-domain-out judgement."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from admin.quality.confidence_fit import (
    Domain,
    ScoredDomain,
    best_cosine_threshold,
    choose_weight,
    fit_confidence,
    leave_one_domain_out,
    reliability,
    with_paraphrases,
)
from admin.quality.evaluation import EvalQuery, reliability_bins
from bot.matcher import Matcher
from faq import FAQ, KnowledgeBase
from index.calibration import Calibration
from index.confidence import (
    FEATURES,
    SINGLE_FAQ_GAP,
    ConfidenceModel,
    ConfidenceModelError,
    RankingWeights,
    ranking_features,
)
from index.faq_index import IndexUnavailableError, answer_evidence, build_index, load_index, publish_index
from index.lexical import LexicalIndex, lexical_form


class CharEncoder:
    """A deterministic bag-of-characters model (hashed into 256 dims): texts sharing characters are close."""

    name = "chars"
    dim = 256
    fingerprint = "chars:test"

    def encode_queries(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for ch in lexical_form(text):
                out[i, ord(ch) % self.dim] += 1.0
            out[i] /= max(1e-9, float(np.linalg.norm(out[i])))
        return out

    encode_passages = encode_queries


def model(**overrides) -> ConfidenceModel:
    """Confidence rises with the top cosine: 50 at s1 = 0.8."""
    values = dict(features=("s1",), coef=(10.0,), intercept=0.0, mean=(0.8,), scale=(1.0,), lexical_weight=0.05)
    return ConfidenceModel(**{**values, **overrides})


KB = KnowledgeBase(faqs=(
    FAQ(id="invoice", question="怎么开发票", answer="在订单页申请电子发票", paraphrases=("可以开票吗",)),
    FAQ(id="refund", question="退款多久到账", answer="退款三个工作日内原路退回", paraphrases=("钱什么时候退回来",)),
    FAQ(id="ship", question="什么时候发货", answer="下单后四十八小时内发货", paraphrases=("多久能发出",)),
))


# --- lexical --------------------------------------------------------------------------------------


def test_lexical_scores_are_character_cosines_ignoring_case_space_and_punctuation() -> None:
    lex = LexicalIndex(["怎么开发票", "退款多久到账", "ABC"])
    q = lex.queries(["怎么 开发票？", "abc!", "今天天气"])
    rows = np.arange(3)
    assert lex.scores(q[0], rows) == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert lex.scores(q[1], rows)[2] == pytest.approx(1.0, abs=1e-6)
    assert lex.scores(q[2], rows) == pytest.approx([0.0, 0.0, 0.0])  # no character of it is in the KB
    assert lexical_form("Ａ b，C") == "abc"


# --- the model ------------------------------------------------------------------------------------


def test_confidence_model_reads_features_and_round_trips() -> None:
    m = model()
    rows = np.array([ranking_features(np.array([s]), np.zeros(1), np.array([s]), 10) for s in (0.7, 0.8, 0.9)])
    low, mid, high = m.confidence(rows)
    assert low < mid == 50.0 < high and low >= 0 and high <= 100
    assert ConfidenceModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    cal = Calibration(confidence=m)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).confidence == m


@pytest.mark.parametrize("bad", [dict(features=("nope",)), dict(coef=(math.nan,)), dict(scale=(0.0,)),
                                 dict(min_confidence=120.0), dict(coef=(1.0, 2.0))])
def test_a_broken_model_is_refused_with_a_clear_error(bad: dict) -> None:
    with pytest.raises(ConfidenceModelError):
        model(**bad)
    with pytest.raises(ConfidenceModelError):
        ConfidenceModel.from_dict({"features": ["s1"]})


def test_ranking_features_of_a_one_faq_kb_and_without_answers() -> None:
    one = ranking_features(np.array([0.9]), np.array([0.5]), np.array([0.92]), 1)
    named = dict(zip(FEATURES, one, strict=True))
    assert named["gap2"] == named["gap_rest"] == SINGLE_FAQ_GAP and named["log_kb"] == 0.0
    assert named["has_answers"] == 0.0 and named["ans1"] == 0.0
    with_answers = dict(zip(FEATURES, ranking_features(np.array([0.9, 0.8, 0.7]), np.zeros(3), np.array([0.9, 0.8, 0.7]),
                                                       3, np.array([0.6, 0.2, 0.4])), strict=True))
    assert with_answers["has_answers"] == 1.0 and with_answers["ans_gap"] == pytest.approx(0.6 - 0.3)


def test_coverage_weighs_the_characters_the_top_faq_lacks_by_rarity() -> None:
    from index.lexical import LexicalIndex

    # two FAQs of two texts each; coverage reads the union of an FAQ's texts
    lexical = LexicalIndex(["身份证丢了怎么补办", "身份证补办要多久", "营业时间是几点", "周末营业吗"], [0, 0, 1, 1], 2)
    by_weight, by_count = lexical.coverage("驾驶证丢了能补吗", [0, 1])
    assert by_count.tolist() == [4 / 8, 1 / 8]  # 证丢了补 of 驾驶证丢了能补吗; 吗 in 周末营业吗
    assert by_weight[0] < by_count[0]  # 驾驶 and 能: no KB text has them, so they weigh the most
    assert lexical.coverage("身份证丢了怎么补办？", [0])[0].tolist() == [1.0]  # punctuation carries nothing
    assert lexical.coverage("？！", [0, 1])[1].tolist() == [1.0, 1.0]
    assert lexical.coverage("营业时间", [0])[1].tolist() == [0.0]
    assert lexical.coverage("营业时间", [])[0].size == 0
    named = dict(zip(FEATURES, ranking_features(np.array([0.9]), np.zeros(1), np.array([0.9]), 4,
                                                coverage=(float(by_weight[0]), float(by_count[0]))), strict=True))
    assert named["cover"] == by_weight[0] and named["cover_share"] == by_count[0]


def test_ranking_weights_fuse_each_term_and_old_models_read_without_the_newer_ones() -> None:
    dense, lexical = np.array([0.90, 0.89]), np.array([0.2, 0.2])
    cover, answer = np.array([0.3, 0.9]), np.array([0.80, 0.88])
    assert np.argmax(RankingWeights(lexical=0.05).fuse(dense, lexical, cover, answer)) == 0  # unset terms count 0
    assert np.argmax(RankingWeights(0.05, coverage=0.02).fuse(dense, lexical, cover)) == 1  # it covers the question
    assert np.argmax(RankingWeights(0.05, answer=0.3).fuse(dense, lexical, answer=answer)) == 1  # its answer fits
    assert np.argmax(RankingWeights(0.05, answer_lexical=0.1).fuse(dense, lexical, answer_lexical=cover)) == 1
    assert not RankingWeights().rescores and RankingWeights(answer=0.1).rescores
    assert RankingWeights(answer_lexical=0.01).rescores
    old = ConfidenceModel.from_dict({"features": ["s1"], "coef": [1.0], "intercept": 0.0, "mean": [0.0],
                                     "scale": [1.0], "lexical_weight": 0.05})
    assert old.ranking == RankingWeights(lexical=0.05) and ConfidenceModel.from_dict(old.to_dict()) == old
    weights = RankingWeights(0.05, 0.01, 0.3, 0.03)
    assert replace(old, **weights.model_fields()).ranking == weights
    for term in ("coverage_weight", "answer_weight", "answer_lexical_weight"):
        with pytest.raises(ConfidenceModelError):
            ConfidenceModel.from_dict({**old.to_dict(), term: -1})


ANSWERED_KB = KnowledgeBase(faqs=(
    FAQ(id="how", question="发票怎么开", answer="请联系人工客服处理"),
    FAQ(id="title", question="发票抬头能改吗", answer="电子发票开具后在订单页重开即可修改抬头"),
    FAQ(id="refund", question="退款多久到账", answer="退款三个工作日内到账"),
))


def test_answer_term_moves_the_ranking_only_where_answers_speak_for_their_faq() -> None:
    enc = CharEncoder()
    query = "电子发票开具"
    vectors = enc.encode_queries([query])
    (dense,) = build_index(ANSWERED_KB, enc, calibration=Calibration(confidence=model())).rank(vectors, [query])
    assert dense.faqs[0].faq_id == "how"  # its question shares the most characters
    index = build_index(ANSWERED_KB, enc, calibration=Calibration(confidence=model(answer_weight=1.0)))
    assert index.answers_speak
    (ranked,) = index.rank(vectors, [query])
    top = ranked.faqs[0]
    assert top.faq_id == "title"  # its answer is about exactly this
    answer_cosine = float(index.answers[1] @ vectors[0])
    assert top.score == pytest.approx(top.similarity + 0.05 * top.lexical + answer_cosine)
    by_chars = build_index(ANSWERED_KB, enc, calibration=Calibration(confidence=model(answer_lexical_weight=1.0)))
    by_chars.prepare()
    (ranked,) = by_chars.rank(vectors, [query])
    top = ranked.faqs[0]
    assert top.faq_id == "title"  # its answer shares the query's characters
    answer_chars = float(by_chars.answer_lexical.scores(by_chars.answer_lexical.queries([query])[0], np.array([1]))[0])
    assert answer_chars > 0.5 and top.score == pytest.approx(top.similarity + 0.05 * top.lexical + answer_chars)
    numbered = KnowledgeBase(faqs=tuple(replace(f, answer=f"ANSWER {i}") for i, f in enumerate(ANSWERED_KB.faqs)))
    mute = build_index(numbered, enc, calibration=Calibration(confidence=model(answer_weight=1.0,
                                                                                    answer_lexical_weight=1.0)))
    assert not mute.answers_speak
    (ranked,) = mute.rank(vectors, [query])
    assert ranked.faqs[0].faq_id == "how" and ranked.faqs[0].score == pytest.approx(
        ranked.faqs[0].similarity + 0.05 * ranked.faqs[0].lexical)


def test_answer_evidence_is_high_for_real_answers_and_low_for_placeholders() -> None:
    enc = CharEncoder()
    questions = enc.encode_passages([f.question for f in KB.faqs])
    assert answer_evidence(questions, enc.encode_passages([f.answer for f in KB.faqs])) >= 0.66
    placeholders = enc.encode_passages(["ANSWER 1", "ANSWER 2", "ANSWER 3"])
    assert answer_evidence(questions, placeholders) <= 0.34
    assert answer_evidence(questions[:1], placeholders[:1]) == 0.0


# --- the decision ---------------------------------------------------------------------------------


def test_rank_fuses_lexical_scores_and_gives_a_confidence() -> None:
    enc = CharEncoder()
    index = build_index(KB, enc, calibration=Calibration(confidence=model()))
    (ranking,) = index.rank(enc.encode_queries(["可以开票吗"]), ["可以开票吗"])
    top = ranking.faqs[0]
    assert top.faq_id == "invoice" and top.lexical == pytest.approx(1.0, abs=1e-5)
    assert top.score == pytest.approx(top.similarity + 0.05 * top.lexical)
    assert ranking.confidence is not None and ranking.confidence > 80  # 100 / (1 + e^-2) at cosine 1
    plain = build_index(KB, enc, calibration=Calibration())
    (dense,) = plain.rank(enc.encode_queries(["可以开票吗"]), ["可以开票吗"])
    assert dense.confidence is None and dense.faqs[0].score == dense.faqs[0].similarity


def test_rule_precedence_confidence_by_default_thresholds_win_when_set() -> None:
    enc = CharEncoder()
    texts = ["可以开票吗", "今天天气怎么样"]
    vectors = enc.encode_queries(texts)
    index = build_index(KB, enc, calibration=Calibration(threshold=0.99, confidence=model()))
    answer, refuse = Matcher(index).match_vectors(vectors, texts)
    assert answer.matched and answer.threshold is None and answer.min_confidence == 50.0
    assert not refuse.matched and refuse.confidence is not None and refuse.confidence < 50
    # FAQBOT_MIN_CONFIDENCE moves the line; FAQBOT_THRESHOLD and the KB default bring back the cosine rule.
    assert not Matcher(index, min_confidence=100.0).match_vectors(vectors, texts)[0].matched
    by_cosine = Matcher(index, threshold=0.2, min_confidence=100.0).match_vectors(vectors, texts)[0]
    assert by_cosine.matched and by_cosine.threshold == 0.2 and by_cosine.min_confidence is None
    assert Matcher(index, kb_default_threshold=1.0).match_vectors(vectors, texts)[0].threshold == 1.0
    # A per-FAQ threshold decides for its FAQ only.
    strict = KnowledgeBase(faqs=(replace(KB.faqs[0], threshold=1.0), *KB.faqs[1:]))
    strict_index = build_index(strict, enc, calibration=Calibration(confidence=model()))
    decision = Matcher(strict_index).match_vectors(vectors[:1], texts[:1])[0]
    assert decision.threshold == 1.0 and not decision.matched
    # An encoder without a model: the calibration's cosine threshold, no confidence.
    plain = build_index(KB, enc, calibration=Calibration(threshold=0.5))
    old = Matcher(plain).match_vectors(vectors, texts)[0]
    assert old.matched and old.confidence is None and old.threshold == 0.5


def test_a_published_index_keeps_answers_and_model_and_refuses_the_old_format(tmp_path: Path) -> None:
    enc = CharEncoder()
    index = build_index(KB, enc, calibration=Calibration(confidence=model()))
    folder = publish_index(index, tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.calibration.confidence == model()
    assert np.allclose(loaded.answers, index.answers) and loaded.meta.answer_evidence == index.meta.answer_evidence
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta["format"] = 1
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IndexUnavailableError, match="format 1"):
        load_index(tmp_path)


# --- the fit --------------------------------------------------------------------------------------


def synthetic(name: str, rng: np.random.Generator, n: int = 200, shift: float = 0.0) -> ScoredDomain:
    """Right answers have a high top cosine and gap; wrong/out-of-scope ones a low one."""
    right = rng.random(n) < 0.6
    in_scope = right | (rng.random(n) < 0.3)
    s1 = np.where(right, 0.95, 0.88) + rng.normal(0, 0.02, n) + shift
    features = np.zeros((n, len(FEATURES)))
    features[:, FEATURES.index("s1")] = s1
    features[:, FEATURES.index("f1")] = s1
    features[:, FEATURES.index("gap2")] = np.where(right, 0.05, 0.01) + rng.normal(0, 0.01, n)
    domain = Domain(name, name, KB, tuple(EvalQuery(str(i), None) for i in range(n)))
    return ScoredDomain(domain, features, right, in_scope, s1, right)


def test_fit_and_leave_one_domain_out_on_separable_domains() -> None:
    rng = np.random.default_rng(3)
    scored = [synthetic(f"d{i}", rng, shift=0.005 * i) for i in range(4)]
    m = fit_confidence(scored, features=("s1", "gap2"), weights=RankingWeights(lexical=0.05))
    assert all(c > 0 for c in m.coef)
    rows, held_out = leave_one_domain_out(scored, [synthetic("extra", rng)], 0.99, features=("s1", "gap2"),
                                          weights=RankingWeights(lexical=0.05))
    assert [r.fitted for r in rows] == [True] * 4 + [False]
    for r in rows:
        assert r.old_rule < 0.5 < r.confidence_rule  # 0.99 refuses almost everything
        assert r.confidence_rule >= r.best_threshold - 0.05
    bins = reliability(held_out)
    assert bins[0].share_right < 20 and bins[-1].share_right > 80


def test_best_cosine_threshold_equals_brute_force() -> None:
    rng = np.random.default_rng(5)
    s = synthetic("d", rng, n=60)
    value, best = best_cosine_threshold(s)
    brute = max(float(((s.dense_similarity >= t) & s.dense_right | (s.dense_similarity < t) & ~s.in_scope).mean())
                for t in [*s.dense_similarity, 2.0])
    assert best == pytest.approx(brute)
    answered = s.dense_similarity >= value
    assert float((answered & s.dense_right | ~answered & ~s.in_scope).mean()) == pytest.approx(best)


def test_lexical_weight_choice_tolerates_one_question_per_domain_at_most() -> None:
    top1 = {0.0: [0.90, 0.80], 0.05: [0.89, 0.90], 0.1: [0.80, 1.00]}
    assert choose_weight(top1, [100, 100]) == 0.05  # 0.1 costs domain 1 ten questions
    assert choose_weight(top1, [10, 100]) == 0.1  # ... but only one of ten here


def test_paraphrase_variant_moves_one_question_per_faq_into_the_kb() -> None:
    kb = KnowledgeBase(faqs=(FAQ(id="a", question="A", answer="x"), FAQ(id="b", question="B", answer="y")))
    queries = [EvalQuery("a1", "a"), EvalQuery("a2", "a"), EvalQuery("b1", "b"), EvalQuery("out", None)]
    para_kb, kept = with_paraphrases(kb, queries)
    assert para_kb.faqs[0].paraphrases == ("a1",) and para_kb.faqs[1].paraphrases == ()
    assert [q.query for q in kept] == ["a2", "b1", "out"]


def test_reliability_bins_weigh_and_count() -> None:
    conf = np.array([5.0, 15.0, 95.0, 100.0])
    right = np.array([False, True, True, True])
    bins = reliability_bins(conf, right)
    assert [(b.low, b.questions) for b in bins] == [(0, 1), (10, 1), (90, 2)]
    assert bins[-1].share_right == 100.0 and bins[-1].mean_confidence == pytest.approx(97.5)


# --- what a KB and a golden file may change ---------------------------------------------------------


def test_kb_evidence_says_when_a_kb_is_too_small_to_say_anything() -> None:
    from admin.quality.kb_calibration import kb_evidence

    evidence = kb_evidence(KB, CharEncoder(), Calibration(confidence=model()))
    assert evidence.paraphrases == 3 and not evidence.enough
    assert evidence.line == 50.0


def golden_cases(n_right: int, n_out: int) -> list[EvalQuery]:
    asked = ["可以开票吗？", "开发票怎么弄", "退款多久能到账", "钱多久退回来", "什么时候能发货", "多久发出"]
    expected = ["invoice", "invoice", "refund", "refund", "ship", "ship"]
    cases = [EvalQuery(asked[i % 6], expected[i % 6]) for i in range(n_right)]
    return cases + [EvalQuery(f"今天天气怎么样{i}", None) for i in range(n_out)]


def test_golden_tuning_moves_the_line_only_on_a_clear_gain_with_enough_questions() -> None:
    from admin.quality.kb_calibration import tune_on_golden, with_min_confidence

    enc = CharEncoder()
    strict = Calibration(confidence=model(min_confidence=99.9))  # refuses nearly every right answer
    few = tune_on_golden(KB, enc, strict, golden_cases(10, 5))
    assert few.adopted is None and "only 15 golden questions" in few.reason
    many = tune_on_golden(KB, enc, strict, golden_cases(24, 6))
    assert many.adopted is not None and many.adopted < 99.9 and many.best_right >= many.current_right + 2
    moved = with_min_confidence(strict, many.adopted, "test")
    assert moved.confidence is not None and moved.confidence.min_confidence == many.adopted and moved.is_local
    fair = tune_on_golden(KB, enc, Calibration(confidence=model()), golden_cases(24, 6))
    assert fair.adopted is None  # the line in force already answers them: nothing to gain


def test_fit_from_domains_chooses_each_ranking_weight_in_turn_and_reports_them(tmp_path: Path) -> None:
    from admin.quality.confidence_fit import fit_from_domains
    from admin.quality.confidence_report import write_confidence_report

    def domain(name: str, kb: KnowledgeBase, asked: list[tuple[str, str | None]]) -> Domain:
        return Domain(name, name, kb, tuple(EvalQuery(q, e) for q, e in asked))

    asked = [("电子发票开具", "title"), ("发票怎么开呢", "how"), ("退款几天到账", "refund"), ("抬头能改吗", "title"),
             ("今天天气好", None), ("你是谁", None)]
    domains = [domain("answered", ANSWERED_KB, asked),
               domain("plain", KB, [("可以开票吗", "invoice"), ("退款多久", "refund"), ("多久发货", "ship"),
                                    ("天气如何", None), ("讲个笑话", None)])]
    grids = {"lexical": (0.0, 0.05), "coverage": (0.0, 0.01), "answer": (0.0, 1.0)}
    fit = fit_from_domains(domains, CharEncoder(), old_threshold=0.9, grids=grids)
    assert list(fit.top1_by_term) == ["lexical", "coverage", "answer"]
    for term, grid in grids.items():
        assert set(fit.top1_by_term[term]) == set(grid)
        assert getattr(fit.model.ranking, term) in grid
    # On the answered KB the answer term puts 电子发票开具 on the FAQ whose answer is about it.
    assert fit.top1_by_term["answer"][1.0][0] > fit.top1_by_term["answer"][0.0][0]
    assert fit.model.answer_weight == 1.0
    assert [r.group for r in fit.rows] == ["answered", "plain"]
    report = write_confidence_report(fit, tmp_path, command="faqbot calibrate ...", encoder="chars:test").read_text()
    assert "answer 1" in report and "by answer weight 0: " in report
