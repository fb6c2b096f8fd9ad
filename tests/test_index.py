"""FAISS index: build, atomic publish, load, search distinct FAQs, refuse a foreign index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faq import FAQ, KnowledgeBase, load_kb
from index.faq_index import (
    IndexUnavailableError,
    StaleIndexError,
    build_index,
    check_compatible,
    live_version,
    load_index,
    publish_index,
)


class OneHotEncoder:
    """A deterministic stand-in encoder for index mechanics: one axis per distinct text (known cosines)."""

    name = "one-hot"
    fingerprint = "one-hot:v1"
    dim = 16

    def __init__(self) -> None:
        self.axes: dict[str, int] = {}

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        v[self.axes.setdefault(text, len(self.axes) % self.dim)] = 1.0
        return v

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    encode_passages = encode_queries


def kb_of(*faqs: FAQ) -> KnowledgeBase:
    return KnowledgeBase(faqs=faqs)


def test_search_returns_distinct_faqs_best_vector_first() -> None:
    encoder = OneHotEncoder()
    kb = kb_of(
        FAQ("a", "甲", "答甲", paraphrases=("甲一", "甲二")),
        FAQ("b", "乙", "答乙", paraphrases=("乙一",)),
        FAQ("c", "丙", "答丙"),
    )
    index = build_index(kb, encoder)
    query = encoder.encode_queries(["甲二"]) * 0.9 + encoder.encode_queries(["乙"]) * 0.4
    (hits,) = index.search(query, top_k=3)
    assert [h.faq_id for h in hits] == ["a", "b", "c"]
    assert hits[0].matched_text == "甲二"
    assert hits[0].similarity == pytest.approx(0.9)
    assert hits[1].similarity == pytest.approx(0.4)


def test_tag_filter_only_considers_tagged_faqs() -> None:
    encoder = OneHotEncoder()
    kb = kb_of(FAQ("a", "甲", "答", tags=("x",)), FAQ("b", "乙", "答", tags=("y",)))
    index = build_index(kb, encoder)
    (hits,) = index.search(encoder.encode_queries(["甲"]), top_k=2, tags=["y"])
    assert [h.faq_id for h in hits] == ["b"]
    assert index.search(encoder.encode_queries(["甲"]), tags=["nope"]) == [[]]


def test_publish_is_atomic_and_versions_are_kept(tmp_path: Path, tiny_kb: Path) -> None:
    encoder = OneHotEncoder()
    kb = load_kb(tiny_kb)
    first = build_index(kb, encoder)
    publish_index(first, tmp_path)
    assert live_version(tmp_path) == first.version
    loaded = load_index(tmp_path)
    assert loaded.meta == first.meta
    assert [f.id for f in loaded.faqs] == [f.id for f in kb.faqs]
    np.testing.assert_array_equal(loaded.row_faq, first.row_faq)
    # A half-written build (as if killed mid-write) is never what CURRENT points at.
    (tmp_path / "index" / "versions" / ".build-crashed").mkdir()
    second = build_index(kb, encoder)
    publish_index(second, tmp_path)
    assert live_version(tmp_path) == second.version
    assert load_index(tmp_path, first.version).version == first.version


def test_incomplete_or_missing_index_is_refused(tmp_path: Path, tiny_kb: Path) -> None:
    with pytest.raises(IndexUnavailableError, match="faqbot build"):
        load_index(tmp_path)
    index = build_index(load_kb(tiny_kb), OneHotEncoder())
    folder = publish_index(index, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["kb"]["vectors"] += 1
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexUnavailableError, match="incomplete"):
        load_index(tmp_path)


def test_foreign_encoder_or_changed_kb_is_refused(tiny_kb: Path) -> None:
    kb = load_kb(tiny_kb)
    index = build_index(kb, OneHotEncoder())
    other = OneHotEncoder()
    other.fingerprint = "one-hot:v2"
    with pytest.raises(StaleIndexError, match="encoder"):
        check_compatible(index, other)
    changed = KnowledgeBase(faqs=kb.faqs[:-1])
    with pytest.raises(StaleIndexError, match="another version of the KB"):
        check_compatible(index, OneHotEncoder(), changed)


@pytest.mark.slow
def test_the_shipped_confidence_refuses_chit_chat_on_a_five_faq_kb(tiny_kb: Path, bundled_encoder) -> None:
    """A first KB is often this small, below every KB the model was fitted on (18 FAQs and up): a refit that
    read such a KB leniently (weather questions answered at up to 76) was caught here and not shipped."""
    from index.calibration import shipped_calibration

    index = build_index(load_kb(tiny_kb), bundled_encoder, calibration=shipped_calibration(bundled_encoder.fingerprint))
    chit_chat = ["今天天气怎么样", "明天会下雨吗", "你是机器人吗", "讲个笑话", "今天股票涨了吗",
                 *[f"和商品无关的第{i}个问题：今天天气怎么样" for i in range(10)]]
    asked = ["可以开票吗", "退货流程是什么", "付款后几天能发出"]
    rankings = index.rank(bundled_encoder.encode_queries(chit_chat + asked), chit_chat + asked)
    answered = {q: r.confidence for q, r in zip(chit_chat, rankings[:len(chit_chat)], strict=True)
                if r.confidence is not None and r.confidence >= 50}
    assert not answered, answered
    assert all(r.confidence is not None and r.confidence >= 50 for r in rankings[len(chit_chat):])


@pytest.mark.slow
def test_bundled_encoder_matches_paraphrases(tiny_kb: Path, bundled_encoder) -> None:
    index = build_index(load_kb(tiny_kb), bundled_encoder)
    queries = bundled_encoder.encode_queries(["能开发票吗", "怎么把东西退回去", "积分能当钱用吗"])
    best = [hits[0].faq_id for hits in index.search(queries, top_k=2)]
    assert best == ["invoice", "return_howto", "member_points"]
    vectors = bundled_encoder.encode_passages(["你好", "世界"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, bundled_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
