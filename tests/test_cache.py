"""The cache key normalisation, the LRU of query vectors and the exact-match fast path."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from bot.cache import EmbeddingCache, ExactMatches
from bot.service import FaqService
from faq import load_kb
from index.faq_index import build_index
from index.text import match_key
from tests.test_batcher import CountingEncoder


@pytest.mark.parametrize(
    ("variants", "why"),
    [
        (["怎么退货？", "怎么退货", "怎么退货?", "怎么退货。", "怎么退货？？！", "怎么退货～"], "trailing punctuation"),
        (["怎么 退货", " 怎么退货 ", "怎么\t退货\n", "怎 么 退 货"], "whitespace"),
        (["ＶＩＰ会员积分", "VIP会员积分", "vip会员积分", "Vip会员积分"], "full-width/half-width and case"),
        (["ｉＰｈｏｎｅ１５能退吗", "iphone15能退吗", "IPHONE15能退吗?"], "full-width digits and letters"),
        (["\u2460号订单", "1号订单"], "NFKC compatibility characters (circled one)"),
        (["ﾃｽﾄ", "テスト"], "half-width katakana"),
        (["怎么\u200b退货", "怎么退货"], "zero-width characters"),
    ],
)
def test_match_key_folds_what_a_customer_would_not_notice(variants: list[str], why: str) -> None:
    keys = {match_key(v) for v in variants}
    assert len(keys) == 1, why


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("怎么退货", "怎么退款"),  # a different word
        ("能退货吗？", "能退货吗？不能？"),  # only *trailing* punctuation folds
        ("订单1", "订单11"),
        ("不退货", "退货"),
    ],
)
def test_match_key_keeps_what_changes_the_meaning(a: str, b: str) -> None:
    assert match_key(a) != match_key(b)


def test_match_key_examples() -> None:
    assert match_key(" 可以 开发票吗？？ ") == "可以开发票吗"
    assert match_key("ＡＢＣ　ｄｅｆ！") == "abcdef"
    assert match_key("怎么退货?!") == "怎么退货"


def test_lru_evicts_the_least_recently_used_and_counts_hits() -> None:
    cache = EmbeddingCache(2)
    a, b, c = (np.full(3, x, dtype=np.float32) for x in (1.0, 2.0, 3.0))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", c)  # evicts b
    assert cache.get("b") is None
    np.testing.assert_array_equal(cache.get("a"), a)
    np.testing.assert_array_equal(cache.get("c"), c)
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    assert cache.hit_ratio == pytest.approx(0.75)


def test_cached_vectors_are_private_copies() -> None:
    cache = EmbeddingCache(4)
    original = np.ones(3, dtype=np.float32)
    cache.put("k", original)
    original[:] = 7.0  # the caller's array changing later does not change the cache
    stored = cache.get("k")
    assert stored is not None and float(stored[0]) == 1.0
    with pytest.raises(ValueError):
        stored[0] = 5.0  # and nobody can change it through what get() returned


def test_zero_capacity_cache_is_off() -> None:
    cache = EmbeddingCache(0)
    cache.put("k", np.ones(3, dtype=np.float32))
    assert cache.get("k") is None and len(cache) == 0 and cache.hits == cache.misses == 0


def test_exact_matches_map_every_faq_text_to_its_stored_vector(tiny_kb: Path) -> None:
    encoder = CountingEncoder()
    index = build_index(load_kb(tiny_kb), encoder)
    exact = ExactMatches(index)
    assert len(exact) == len(index.row_text)
    found = exact.get(match_key("可以开票吗？"))  # the KB text is "可以开票吗"
    assert found is not None
    np.testing.assert_allclose(found, encoder.vector("可以开票吗"), rtol=1e-6)
    assert exact.get(match_key("可以开票吗，谢谢")) is None


# --- the service: which questions reach the encoder ---------------------------------------------------
def _service(make_settings, encoder: CountingEncoder, **overrides: object) -> FaqService:
    from index.faq_index import publish_index

    settings = make_settings(**overrides)
    service = FaqService(settings, encoder=encoder)
    index = build_index(load_kb(settings.kb), encoder)
    publish_index(index, settings.data_dir)
    service.use_index(index)
    encoder.calls.clear()
    return service


def test_a_faq_text_skips_the_encoder_and_decides_like_the_encoder(make_settings) -> None:
    encoder = CountingEncoder()
    service = _service(make_settings, encoder, threshold=0.5)
    fast = service.chat("可以开票吗？", log_turn=False).decision  # normalises to the KB paraphrase "可以开票吗"
    assert encoder.calls == []
    assert service.vector_sources == {"exact": 1, "cache": 0, "encoder": 0}
    slow = service.matcher.match_vectors(encoder.vector("可以开票吗")[None, :], ["可以开票吗"], top_k=3)[0]
    assert fast == slow
    assert fast.matched and fast.faq is not None and fast.faq.id == "invoice"
    assert fast.best is not None and fast.best.similarity == pytest.approx(1.0, abs=1e-5)


def test_repeated_questions_in_any_spelling_are_encoded_once(make_settings) -> None:
    encoder = CountingEncoder()
    service = _service(make_settings, encoder, threshold=0.5)
    first = service.chat("发票怎么开？", log_turn=False).decision
    again = [service.chat(q, log_turn=False).decision for q in ("发票怎么开", "发票 怎么开?!", "发票怎么开。")]
    assert encoder.calls == [["发票怎么开?"]]  # sanitised (NFKC) before the encoder, punctuation and all
    assert all(d == first for d in again)
    assert service.vector_sources == {"exact": 0, "cache": 3, "encoder": 1}
    assert service.cache_hit_ratio() == pytest.approx(0.75)


def test_cache_and_exact_match_can_be_turned_off(make_settings) -> None:
    encoder = CountingEncoder()
    service = _service(make_settings, encoder, cache_size=0, exact_match=False)
    for _ in range(2):
        service.chat("可以开票吗", log_turn=False)
    assert [len(c) for c in encoder.calls] == [1, 1]


def test_passage_prefix_disables_the_exact_match_path(make_settings) -> None:
    """With `kb_prefix=passage` a KB vector is not the query vector of the same text: never use it as one."""
    encoder = CountingEncoder()
    service = _service(make_settings, encoder, kb_prefix="passage")
    service.chat("可以开票吗", log_turn=False)
    assert encoder.calls == [["可以开票吗"]]


def test_encode_queries_mixes_known_and_new_texts_in_order(make_settings) -> None:
    encoder = CountingEncoder()
    service = _service(make_settings, encoder)
    service.encode_queries(["发票怎么开"])
    encoder.calls.clear()
    texts = ["怎么退货", "新问题一", "发票怎么开？", "新问题二"]
    vectors = service.encode_queries(texts)
    assert encoder.calls == [["新问题一", "新问题二"]]
    expected = np.stack([encoder.vector(t) for t in ("怎么退货？", "新问题一", "发票怎么开", "新问题二")])
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)


@pytest.mark.slow
def test_hit_ratio_is_exported_in_metrics(live_app: str) -> None:
    for message in ("你们能开发票吗", "你们能开发票吗？", "怎么退货", "明天下雨吗"):
        assert httpx.post(live_app + "/chat", json={"message": message}, timeout=30).status_code == 200
    metrics = httpx.get(live_app + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[-1]) for line in metrics.splitlines()
              if line.startswith("faqbot_query_")}
    assert values['faqbot_query_vectors_total{source="encoder"}'] == 2
    assert values['faqbot_query_vectors_total{source="cache"}'] == 1
    assert values['faqbot_query_vectors_total{source="exact"}'] == 1
    assert values["faqbot_query_cache_hit_ratio"] == pytest.approx(0.5)
    assert values["faqbot_query_cache_entries"] == 2
