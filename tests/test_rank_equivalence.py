"""The vectorised hybrid ranking gives the same bits as the loops it replaced (issue #21 B).

`FaqIndex._best_rows` and `LexicalIndex.scores` were rewritten for speed (plain numpy instead of a
Python loop and scipy's sparse product). The old versions are kept here as the reference; every
ranking, feature and confidence of a few hundred queries on a KB of a few thousand FAQs must be equal.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from faq import FAQ, KnowledgeBase, load_kb
from index.calibration import CALIBRATION_DIR, Calibration
from index.faq_index import FaqIndex, Ranking, build_index
from index.lexical import CharVector, LexicalIndex

SAMPLE_KB = Path(__file__).resolve().parents[1] / "faq" / "sample"


class BigramEncoder:
    """Deterministic vectors from character bigrams: texts sharing wording are near (a dense stand-in)."""

    name = "bigram"
    fingerprint = "bigram:v1"
    dim = 64

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for a, b in zip(text, text[1:] + "$", strict=True):
            h = hashlib.blake2b((a + b).encode(), digest_size=4).digest()
            v[int.from_bytes(h[:2], "little") % self.dim] += 1.0 if h[2] & 1 else -1.0
        return v / max(float(np.linalg.norm(v)), 1e-6)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    encode_passages = encode_queries


def _old_best_rows(self: FaqIndex, row_scores: np.ndarray, row_ids: np.ndarray, limit: int):
    positions, dense, matched, seen = [], [], [], set()
    for score, row in zip(row_scores, row_ids, strict=True):
        if row < 0:
            continue
        faq_pos = int(self.row_faq[row])
        if faq_pos in seen:
            continue
        seen.add(faq_pos)
        positions.append(faq_pos)
        dense.append(min(1.0, float(score)))
        matched.append(self.row_text[row])
        if len(positions) == limit:
            break
    return positions, np.asarray(dense, dtype=np.float64), matched


def _old_scores(self: LexicalIndex, query: CharVector, rows: np.ndarray) -> np.ndarray:
    if rows.size == 0 or query.nnz == 0:
        return np.zeros(rows.size, dtype=np.float32)
    matrix = sparse.csr_matrix((query.data, query.indices, [0, query.nnz]), shape=(1, self.rows.shape[1]))
    return np.asarray((self.rows[rows] @ matrix.T).todense(), dtype=np.float32).ravel()


def _kb() -> KnowledgeBase:
    """The sample KB plus ~2,000 FAQs recombined from its texts (shared characters, several texts per FAQ)."""
    sample = load_kb(SAMPLE_KB)
    texts = [t for _, t in sample.texts()]
    rng = random.Random(21)
    faqs = list(sample.faqs)
    for i in range(2000):
        pieces = [rng.choice(texts)[: rng.randint(3, 12)] for _ in range(rng.randint(1, 3))]
        paraphrases = tuple(rng.choice(texts)[rng.randint(0, 4):] + str(i) for _ in range(rng.randint(0, 3)))
        faqs.append(FAQ(id=f"syn{i}", question="".join(pieces) + "？", answer=f"答{i}", paraphrases=paraphrases,
                        tags=("syn", "odd") if i % 2 else ("syn",)))
    return KnowledgeBase(faqs=tuple(faqs))


def _as_tuple(ranking: Ranking) -> tuple:
    return ranking.faqs, ranking.confidence, ranking.features.tobytes(), ranking.features.shape


@pytest.fixture(scope="module")
def index() -> FaqIndex:
    onnx_calibration = next(CALIBRATION_DIR.glob("onnx_*.json"))  # has the confidence model and a lexical weight
    import json

    calibration = Calibration.from_dict(json.loads(onnx_calibration.read_text(encoding="utf-8")))
    assert calibration.confidence is not None and calibration.confidence.lexical_weight > 0
    return build_index(_kb(), BigramEncoder(), calibration=calibration)


def test_vectorised_ranking_equals_the_loops_it_replaced(index: FaqIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    kb_texts = index.row_text
    queries = [rng.choice(kb_texts) for _ in range(100)]  # verbatim KB texts (similarity 1.0)
    queries += [rng.choice(("请问", "你好，", "")) + rng.choice(kb_texts)[1:] + rng.choice(("吗", "？", "呢"))
                for _ in range(200)]
    queries += ["完全无关的问题", "xyz", "？？", "发票发票发票退货退款怎么办理会员积分"]
    vectors = BigramEncoder().encode_queries(queries)
    new = [index.rank(vectors, queries, tags=tags) for tags in (None, ("odd",), ("nosuchtag",))]
    new.append(index.rank(vectors, queries, depth=3))
    with monkeypatch.context() as patched:
        patched.setattr(FaqIndex, "_best_rows", _old_best_rows)
        patched.setattr(LexicalIndex, "scores", _old_scores)
        old = [index.rank(vectors, queries, tags=tags) for tags in (None, ("odd",), ("nosuchtag",))]
        old.append(index.rank(vectors, queries, depth=3))
    for new_run, old_run in zip(new, old, strict=True):
        assert [_as_tuple(r) for r in new_run] == [_as_tuple(r) for r in old_run]
    assert any(f.lexical > 0 for r in new[0] for f in r.faqs) and any(r.confidence for r in new[0])


def test_lexical_scores_are_bit_identical_on_any_row_selection(index: FaqIndex) -> None:
    lexical = index.lexical
    rng = np.random.default_rng(3)
    for text in ("怎么退货", "发票", "会员积分能抵现吗？", index.row_text[5], "无关"):
        (query,) = lexical.queries([text])
        rows = rng.integers(0, len(index.row_text), size=400)
        assert np.array_equal(lexical.scores(query, rows), _old_scores(lexical, query, rows))
        assert lexical.scores(query, np.zeros(0, np.int64)).shape == (0,)


def test_rows_per_faq_and_per_tag_are_what_the_scans_gave(index: FaqIndex) -> None:
    for i, rows in enumerate(index._faq_rows):
        assert rows.dtype == np.int64 and np.array_equal(rows, np.flatnonzero(index.row_faq == i))
    assert len(index._faq_rows) == len(index.faqs)
    for tag, rows in index._rows_by_tag.items():
        tagged = {i for i, f in enumerate(index.faqs) if tag in f.tags}
        expected = np.array([r for r, fi in enumerate(index.row_faq) if fi in tagged], dtype=np.int64)
        assert rows.dtype == np.int64 and np.array_equal(rows, expected)


def test_a_large_kb_gets_an_hnsw_index_that_ranks_like_the_flat_one(index: FaqIndex, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """From APPROXIMATE_FROM_ROWS texts on the vectors go into HNSW: same rankings here (a few thousand rows,
    efSearch 256), tag filters included, and it survives publish/load; related FAQs read its stored vectors."""
    import faiss

    import index.faq_index as faq_index
    from bot.related import RelatedFaqs

    monkeypatch.setattr(faq_index, "APPROXIMATE_FROM_ROWS", 1000)
    assert index.vectors.ntotal >= 1000 and isinstance(index.vectors, faiss.IndexFlatIP)
    approximate = build_index(_kb(), BigramEncoder(), calibration=index.calibration)
    assert isinstance(approximate.vectors, faiss.IndexHNSW)
    faq_index.publish_index(approximate, tmp_path)
    loaded = faq_index.load_index(tmp_path)
    assert isinstance(loaded.vectors, faiss.IndexHNSW)
    rng = random.Random(11)
    queries = [rng.choice(index.row_text)[1:] + "吗" for _ in range(200)]
    vectors = BigramEncoder().encode_queries(queries)
    same = 0
    for tags in (None, ("odd",)):
        exact = index.rank(vectors, queries, tags=tags)
        for ann in (approximate.rank(vectors, queries, tags=tags), loaded.rank(vectors, queries, tags=tags)):
            same += sum(a.faqs[0].faq_id == e.faqs[0].faq_id for a, e in zip(ann, exact, strict=True))
            if tags:
                assert all("odd" in loaded.faq_by_id[f.faq_id].tags for r in ann for f in r.faqs)
    assert same >= 0.99 * 4 * len(queries)  # recall@1 of the approximate search
    assert RelatedFaqs(loaded).nearest(loaded.faqs[0].id) == RelatedFaqs(index).nearest(index.faqs[0].id)
