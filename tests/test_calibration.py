"""The percent map is monotone and bounded, fitting is deterministic, and calibrations are stored and shipped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from admin.cli.main import main
from admin.quality.calibrate import (
    CalibrationDataError,
    calibrate_from_kb,
    calibrate_from_pairs,
    faq_bench_from_pairs,
    fit_percent_map,
)
from admin.quality.evaluation import LabelledPair, evaluate_pairs
from faq import load_kb
from index.calibration import (
    SCOPE_LOCAL,
    SCOPE_SHIPPED,
    Calibration,
    CalibrationError,
    calibration_file,
    default_calibration,
    shipped_calibration,
)
from index.faq_index import build_index, load_index, publish_index, with_calibration


def synthetic_pairs(seed: int = 7, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Cosines like an e5 model's: unrelated around 0.86, paraphrases around 0.95."""
    rng = np.random.default_rng(seed)
    negatives = np.clip(rng.normal(0.86, 0.03, n), -1, 1)
    positives = np.clip(rng.normal(0.95, 0.025, n), -1, 1)
    return np.concatenate([negatives, positives]), np.concatenate([np.zeros(n, int), np.ones(n, int)])


def test_fitted_map_is_monotone_and_bounded():
    cosines, labels = synthetic_pairs()
    fitted = fit_percent_map(cosines, labels)
    calibration = Calibration(fitted.knots_cosine, fitted.knots_percent)
    grid = np.linspace(-1.0, 1.0, 4001)
    percents = np.asarray(calibration.percent(grid))
    assert np.all(np.diff(percents) >= 0)
    assert percents.min() == 0.0 and percents.max() == 100.0
    assert calibration.percent(1.0) == 100.0 and calibration.percent(-1.0) == 0.0
    # the separation reads as intended: unrelated low, paraphrases high
    assert calibration.percent(0.86) < 20 < 80 < calibration.percent(0.96)


def test_fit_is_deterministic_and_order_free():
    cosines, labels = synthetic_pairs()
    first = fit_percent_map(cosines, labels)
    again = fit_percent_map(cosines.copy(), labels.copy())
    shuffled = np.random.default_rng(1).permutation(len(cosines))
    reordered = fit_percent_map(cosines[shuffled], labels[shuffled])
    assert first == again == reordered


def test_a_non_monotone_or_unbounded_calibration_is_refused():
    with pytest.raises(CalibrationError):
        Calibration((0.0, 0.9, 0.8), (0.0, 50.0, 100.0))
    with pytest.raises(CalibrationError):
        Calibration((0.0, 0.5, 1.0), (0.0, 60.0, 40.0))
    with pytest.raises(CalibrationError):
        Calibration((0.0, 1.0), (0.0, 120.0))
    with pytest.raises(CalibrationError):
        Calibration.from_dict({"knots_cosine": [0, 1], "knots_percent": [0, 100], "threshold": float("nan")})


def test_cosine_for_percent_inverts_the_map():
    calibration = Calibration((0.8, 0.9, 1.0), (0.0, 50.0, 100.0))
    assert calibration.cosine_for_percent(50.0) == pytest.approx(0.9)
    assert calibration.cosine_for_percent(75.0) == pytest.approx(0.95)
    assert calibration.percent(calibration.cosine_for_percent(25.0)) == pytest.approx(25.0)


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(CalibrationDataError, match="at least"):
        fit_percent_map(np.array([0.9, 0.95, 0.8]), np.array([1, 1, 0]))


def test_faq_simulation_from_pairs_never_puts_a_question_on_both_sides():
    pairs = [LabelledPair(f"问题{i}", f"问题{i}的另一种问法", 1.0) for i in range(20)]
    pairs += [LabelledPair("问题0", "问题0？", 1.0), LabelledPair("甲", "乙", 0.0)]
    kb, queries = faq_bench_from_pairs(pairs, name="t")
    kb_texts = {f.question for f in kb.faqs}
    assert len(kb.faqs) == 14  # 70% of the 20 groups
    assert not kb_texts & {q.query for q in queries}
    assert sum(q.expected is None for q in queries) == 2 * 6  # both texts of each withheld group
    again = faq_bench_from_pairs(pairs, name="t")
    assert again == (kb, queries)


def test_shipped_calibration_for_the_bundled_encoder(bundled_encoder):
    shipped = shipped_calibration(bundled_encoder.fingerprint)
    assert shipped is not None, f"missing {calibration_file(bundled_encoder.fingerprint)}"
    assert shipped.scope == SCOPE_SHIPPED
    assert default_calibration(bundled_encoder.fingerprint) == shipped
    data = json.loads(calibration_file(bundled_encoder.fingerprint).read_text(encoding="utf-8"))
    assert data["fingerprint"] == bundled_encoder.fingerprint
    assert "faqbot calibrate" in str(data["extra"]["command"])
    # Hand-made pairs: paraphrases read high, unrelated sentences low (the held-out check is in docs/quality.md).
    paraphrases = [("怎么退货", "我想退货怎么操作"), ("可以开发票吗", "能开发票吗"), ("多久发货", "什么时候发货"),
                   ("密码忘了怎么办", "忘记密码了怎么找回"), ("怎么修改收货地址", "收货地址怎么改")]
    unrelated = [("怎么退货", "今天天气怎么样"), ("可以开发票吗", "推荐一部好看的电影"), ("多久发货", "红烧肉怎么做"),
                 ("密码忘了怎么办", "世界上最高的山是哪座"), ("怎么修改收货地址", "给我讲个笑话吧")]
    pairs = [LabelledPair(a, b, 1.0) for a, b in paraphrases] + [LabelledPair(a, b, 0.0) for a, b in unrelated]
    result = evaluate_pairs(bundled_encoder, pairs, calibration=shipped)
    percents = np.asarray(shipped.percent(result.cosines))
    assert percents[:5].min() > percents[5:].max()
    assert result.median_percent_negative < 40 < 50 < result.median_percent_positive


def test_kb_calibration_is_deterministic(tiny_kb, bundled_encoder):
    kb = load_kb(tiny_kb)
    first = calibrate_from_kb(bundled_encoder, kb).calibration
    second = calibrate_from_kb(bundled_encoder, kb).calibration
    assert (first.knots_cosine, first.knots_percent, first.threshold, first.margin) == (
        second.knots_cosine, second.knots_percent, second.threshold, second.margin)
    assert first.scope == SCOPE_LOCAL
    assert np.all(np.diff(first.knots_percent) >= 0)


def test_pairs_calibration_on_hand_made_pairs(bundled_encoder):
    topics = ["退货", "发票", "发货", "密码", "积分", "优惠券", "地址", "退款"]
    pairs = [LabelledPair(f"怎么申请{t}", f"{t}要怎么申请", 1.0) for t in topics]
    pairs += [LabelledPair(f"怎么申请{a}", f"{b}在哪里看", 0.0) for a, b in zip(topics, topics[1:] + topics[:1], strict=True)]
    fit = calibrate_from_pairs(bundled_encoder, {"hand": pairs}, threshold_sets={"other": pairs[:4] + pairs[-4:]},
                               command="test")
    calibration = fit.calibration
    assert calibration.percent(1.0) == 100.0
    assert np.all(np.diff(calibration.knots_percent) >= 0)
    assert fit.sources[0].pairs == len(pairs)
    assert [s.name for s in fit.sources] == ["hand", "other (threshold only)"]
    assert calibration.extra["command"] == "test"
    json.dumps(calibration.to_dict(), allow_nan=False)  # strict JSON: no NaN from a threshold-only source
    with pytest.raises(CalibrationDataError, match="0/1"):
        calibrate_from_pairs(bundled_encoder, {"graded": [LabelledPair("a", "b", 3.0)] * 10})


def test_calibrate_from_the_kb_alone_stores_nothing(make_settings, bundled_encoder, capsys):
    from bot.service import build_and_publish

    settings = make_settings()
    first = build_and_publish(settings, bundled_encoder)
    code = main(["calibrate", "--kb", str(settings.kb), "--data-dir", str(settings.data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "keeping the shipped fit, nothing stored" in out
    assert "too little evidence" in out  # 5 FAQs, 10 paraphrases: it says so rather than guess
    assert load_index(settings.data_dir).version == first.version


GOLDEN = """version: 1
tests:
""" + "".join(f"  - query: {q}\n    expected: {e}\n" for q, e in [
    ("可以开发票吗", "invoice"), ("能开发票不", "invoice"), ("发票怎么开", "invoice"), ("我想开张发票", "invoice"),
    ("怎么退货呀", "return_howto"), ("退货流程是什么", "return_howto"), ("东西想退掉怎么办", "return_howto"),
    ("多久能发货", "shipping_time"), ("什么时候发货呢", "shipping_time"), ("下单后几天发货", "shipping_time"),
    ("密码忘记了", "change_password"), ("怎么改登录密码", "change_password"), ("重置密码", "change_password"),
    ("积分能干什么", "member_points"), ("积分怎么抵钱", "member_points"), ("会员积分怎么用", "member_points"),
    ("今天天气怎么样", "null"), ("给我讲个笑话", "null"), ("推荐一部电影", "null"), ("红烧肉怎么做", "null"),
    ("股票会涨吗", "null")])


def test_calibrate_with_golden_questions_keeps_a_line_they_do_not_beat(make_settings, bundled_encoder, capsys):
    from bot.service import build_and_publish

    settings = make_settings()
    (settings.kb / "tests.yaml").write_text(GOLDEN, encoding="utf-8")
    first = build_and_publish(settings, bundled_encoder)
    code = main(["calibrate", "--kb", str(settings.kb), "--data-dir", str(settings.data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "golden" in out and "right at line 50" in out
    if "moving the line" in out:  # only for a clear gain: then it is stored, as this deployment's
        live = load_index(settings.data_dir)
        assert live.calibration.is_local and live.calibration.confidence.min_confidence != 50.0
    else:
        assert "keeping line 50" in out and load_index(settings.data_dir).version == first.version


def test_calibrate_from_pairs_stores_into_the_live_index_and_survives_rebuilds(make_settings, bundled_encoder,
                                                                              capsys, tmp_path):
    from bot.service import build_and_publish, previous_calibration

    settings = make_settings()
    first = build_and_publish(settings, bundled_encoder)
    topics = ["退货", "发票", "发货", "密码", "积分", "优惠券", "地址", "退款"]
    rows = [f"怎么申请{t}\t{t}要怎么申请\t1" for t in topics]
    rows += [f"怎么申请{a}\t{b}在哪里看\t0" for a, b in zip(topics, topics[1:] + topics[:1], strict=True)]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code = main(["calibrate", "--kb", str(settings.kb), "--data-dir", str(settings.data_dir), "--pairs", str(pairs)])
    assert code == 0, capsys.readouterr().err
    live = load_index(settings.data_dir)
    assert live.version != first.version
    assert live.calibration.is_local and live.calibration.source.startswith("pairs")
    assert live.calibration.confidence == first.calibration.confidence  # the decision's model is kept
    assert live.meta.n_vectors == first.meta.n_vectors
    # a KB rebuild keeps the locally fitted calibration ...
    kept = previous_calibration(settings, bundled_encoder)
    assert kept == live.calibration
    # ... but never an old shipped/uncalibrated one, which is re-read from the package instead
    publish_index(with_calibration(live, Calibration()), settings.data_dir)
    assert previous_calibration(settings, bundled_encoder) is None


def test_in_memory_index_reads_scores_with_the_given_calibration(tiny_kb, bundled_encoder):
    custom = Calibration((0.5, 1.0), (0.0, 100.0), threshold=0.8, margin=0.01, extra={"scope": SCOPE_LOCAL})
    index = build_index(load_kb(tiny_kb), bundled_encoder, calibration=custom)
    swapped = with_calibration(index, Calibration())
    assert index.calibration == custom and swapped.calibration == Calibration()
    assert swapped.vectors is index.vectors and swapped.version != index.version


def test_an_index_reads_the_shipped_calibration_as_it_is_now_and_keeps_a_local_one(tmp_path, monkeypatch) -> None:
    """An upgrade's refit applies to an index built before it (no re-encoding); a deployment's own fit stays."""
    import dataclasses

    import index.calibration as calibration_module
    from index.calibration import SCOPE_LOCAL, Calibration, write_shipped_calibration
    from tests.test_rank_equivalence import SAMPLE_KB, BigramEncoder

    monkeypatch.setattr(calibration_module, "CALIBRATION_DIR", tmp_path / "calibrations")
    encoder = BigramEncoder()
    old = Calibration(threshold=0.81)
    write_shipped_calibration(old, encoder.fingerprint)
    shipped_then = calibration_module.shipped_calibration(encoder.fingerprint)
    assert shipped_then is not None and shipped_then.scope == "shipped"
    publish_index(build_index(load_kb(SAMPLE_KB), encoder, calibration=shipped_then), tmp_path / "a")
    write_shipped_calibration(dataclasses.replace(old, threshold=0.86), encoder.fingerprint)  # the upgrade
    assert load_index(tmp_path / "a").calibration.threshold == 0.86
    local = dataclasses.replace(old, threshold=0.9, extra={"scope": SCOPE_LOCAL})
    publish_index(build_index(load_kb(SAMPLE_KB), encoder, calibration=local), tmp_path / "b")
    assert load_index(tmp_path / "b").calibration.threshold == 0.9
