"""The sentence-transformers backend on a tiny BERT built here (random weights, small vocab, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faq import load_kb
from index.encoders import EncoderError, EncoderSpec, load_encoder
from index.faq_index import build_index

pytestmark = pytest.mark.slow





def test_encodes_normalised_float32_with_prompts(tiny_st_model: Path) -> None:
    encoder = load_encoder(EncoderSpec(spec=f"sentence-transformers:{tiny_st_model}", kb_prefix="passage"))
    queries = encoder.encode_queries(["可以开票吗", "怎么退货"])
    passages = encoder.encode_passages(["可以开票吗", "怎么退货"])
    assert queries.dtype == np.float32 and queries.shape == (2, 32) and encoder.dim == 32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(queries, passages)  # the query and passage prompts differ
    symmetric = load_encoder(EncoderSpec(spec=f"sentence-transformers:{tiny_st_model}", kb_prefix="query"))
    np.testing.assert_allclose(symmetric.encode_passages(["可以开票吗"]), queries[:1], atol=1e-5)
    assert encoder.fingerprint != symmetric.fingerprint
    assert encoder.encode_queries([]).shape == (0, 32)


def test_long_text_is_truncated_not_an_error(tiny_st_model: Path) -> None:
    encoder = load_encoder(EncoderSpec(spec=f"sentence-transformers:{tiny_st_model}", max_seq_length=16))
    long_a = encoder.encode_queries(["开票" * 500])
    long_b = encoder.encode_queries(["开票" * 400])
    np.testing.assert_allclose(long_a, long_b, atol=1e-5)  # both cut to the same first 16 tokens


def test_builds_an_index_and_fingerprint_follows_the_weights(tiny_st_model: Path, tiny_kb: Path) -> None:
    encoder = load_encoder(EncoderSpec(spec=f"sentence-transformers:{tiny_st_model}"))
    index = build_index(load_kb(tiny_kb), encoder)
    (hits,) = index.search(encoder.encode_queries(["可以开票吗"]), top_k=3)
    assert hits[0].faq_id == "invoice" and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert str(tiny_st_model) in encoder.fingerprint


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="cannot load sentence-transformers model"):
        load_encoder(EncoderSpec(spec=f"sentence-transformers:{tmp_path / 'nope'}"))
    with pytest.raises(EncoderError, match="unknown encoder"):
        load_encoder(EncoderSpec(spec="word2vec:abc"))
